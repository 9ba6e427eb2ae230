package org.edpo.camunda;

import java.sql.Connection;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.List;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import javax.sql.DataSource;
import org.camunda.bpm.engine.ProcessEngine;
import org.camunda.bpm.engine.impl.cfg.AbstractProcessEnginePlugin;
import org.camunda.bpm.engine.impl.cfg.ProcessEngineConfigurationImpl;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.stereotype.Component;

/**
 * On PostgreSQL, keeps the planner's statistics of the engine's runtime tables current.
 *
 * <p>The runtime tables (ACT_RU_*) are queues: empty at rest, thousands of rows while orders are
 * in flight. Analyzed while empty, they get their foreign-key checks (which run with every
 * delete of an execution, a variable or a subscription) planned as sequential scans, and
 * autovacuum, which looks at a database once a minute and analyzes a table only after a fifth
 * of it changed, keeps those plans while the tables fill up. In a burst of 600 orders that was
 * 138,000 scans reading 73 million rows, and 2.2 ms to delete one execution
 * (pg_stat_statements; docs/benchmarks.md). Every few seconds this looks for runtime tables
 * whose statistics count far fewer rows than they hold and analyzes those: milliseconds, and the
 * planner uses their indexes again.
 */
@Component
public class RuntimeTableStatistics extends AbstractProcessEnginePlugin {

  private static final Logger LOG = LoggerFactory.getLogger(RuntimeTableStatistics.class);

  static final List<String> TABLES = List.of(
      "ACT_RU_EXECUTION", "ACT_RU_VARIABLE", "ACT_RU_EVENT_SUBSCR", "ACT_RU_EXT_TASK", "ACT_RU_JOB",
      "ACT_RU_TASK", "ACT_RU_IDENTITYLINK", "ACT_RU_INCIDENT");

  private final long intervalMillis;
  private volatile boolean failing;

  public RuntimeTableStatistics(@Value("${EDPO_CAMUNDA_ANALYZE_INTERVAL:5}") double intervalSeconds) {
    this.intervalMillis = (long) (intervalSeconds * 1000);
  }

  @Override
  public void postProcessEngineBuild(ProcessEngine engine) {
    ProcessEngineConfigurationImpl config = (ProcessEngineConfigurationImpl) engine.getProcessEngineConfiguration();
    if (!"postgres".equals(config.getDatabaseType()) || intervalMillis <= 0) {
      return;
    }
    DataSource dataSource = config.getDataSource();
    ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor(runnable -> {
      Thread thread = new Thread(runnable, "edpo-analyze-runtime-tables");
      thread.setDaemon(true);
      return thread;
    });
    timer.scheduleWithFixedDelay(() -> analyze(dataSource), 0, intervalMillis, TimeUnit.MILLISECONDS);
    LOG.info("runtime tables analyzed when their statistics fall behind (checked every {} ms): {}",
        intervalMillis, TABLES);
  }

  /**
   * Tables whose statistics count fewer than half the rows they hold now (at least 200): those
   * the planner would scan sequentially. A table whose statistics are current is left alone, as
   * every ANALYZE makes every connection plan its statements again.
   */
  static final String STALE = "SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
      + " WHERE upper(s.relname) IN ('" + String.join("', '", TABLES) + "')"
      + " AND s.n_live_tup >= 200 AND c.reltuples < s.n_live_tup / 2";

  private void analyze(DataSource dataSource) {
    try (Connection connection = dataSource.getConnection(); Statement statement = connection.createStatement()) {
      connection.setAutoCommit(true);
      List<String> stale = new java.util.ArrayList<>();
      try (java.sql.ResultSet rows = statement.executeQuery(STALE)) {
        while (rows.next()) {
          stale.add(rows.getString(1));
        }
      }
      if (!stale.isEmpty()) {
        // Behind a vacuum of the same table, skip this round rather than queue up.
        statement.execute("SET lock_timeout = '1s'");
        statement.execute("ANALYZE " + String.join(", ", stale));
        statement.execute("RESET lock_timeout");
        LOG.debug("analyzed {}", stale);
      }
      if (failing) {
        LOG.info("analyzing the runtime tables works again");
        failing = false;
      }
    } catch (SQLException | RuntimeException e) {
      if (!failing) {
        // The engine works on without it, only slower under load.
        LOG.warn("could not analyze the runtime tables (tried again every {} ms): {}", intervalMillis, e.getMessage());
        failing = true;
      }
    }
  }
}
