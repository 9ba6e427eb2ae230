package org.edpo.camunda;

import ch.qos.logback.classic.Level;
import ch.qos.logback.classic.Logger;
import ch.qos.logback.classic.turbo.TurboFilter;
import ch.qos.logback.core.spi.FilterReply;
import org.camunda.bpm.engine.MismatchingMessageCorrelationException;
import org.camunda.bpm.engine.OptimisticLockingException;
import org.camunda.bpm.engine.exception.NullValueException;
import org.slf4j.Marker;

/**
 * Logs expected outcomes as one short line instead of an error with a stack trace.
 *
 * <p>The engine logs every exception a command ends with at ERROR, with its stack trace
 * (ENGINE-16004, logger {@code org.camunda.bpm.engine.context}), and the REST API every answer
 * 5xx at WARN with the stack trace in the message ({@code org.camunda.bpm.engine.rest.exception}).
 * Three of those are outcomes EDPO expects and handles, not errors:
 *
 * <ul>
 *   <li>a message that finds no instance waiting for it ({@link MismatchingMessageCorrelationException}):
 *       an event that arrived before its process got there; the process bridge tries again
 *       (edpo/agents/order/bridge.py). The REST API answers 400 and logs it at DEBUG already.
 *   <li>a concurrent update ({@link OptimisticLockingException}, ENGINE-03005) of an external task,
 *       e.g. a completion racing a lock renewal: the REST API answers 500, the worker's task comes
 *       back after its lock expires and runs again.
 *   <li>a completion of an external task whose execution has just ended ({@link NullValueException}
 *       "Cannot find execution ... for external task"): a customer's cancellation interrupted the
 *       task while a worker ran it; nothing is left to complete.
 * </ul>
 *
 * <p>(The engine itself logs an OptimisticLockingException that ends a command at DEBUG.) About 11 kB
 * of stack trace each, they made up 98% of the engine's log (15 MB after a few test
 * runs). Each now becomes one line on the logger {@code org.edpo.camunda.expected}: correlation
 * misses at DEBUG (not written unless that logger is set to DEBUG), the others at INFO. Every other
 * exception is logged as before, with its stack trace.
 */
public class ExpectedOutcomes extends TurboFilter {

  static final String CONTEXT_LOGGER = "org.camunda.bpm.engine.context";
  static final String REST_LOGGER = "org.camunda.bpm.engine.rest.exception";
  static final String EXPECTED_LOGGER = "org.edpo.camunda.expected";

  @Override
  public FilterReply decide(Marker marker, Logger logger, Level level, String format, Object[] params,
                            Throwable t) {
    if (level == null || !level.isGreaterOrEqual(Level.WARN) || format == null) {
      return FilterReply.NEUTRAL;
    }
    String name = logger.getName();
    if (CONTEXT_LOGGER.equals(name)) {
      Throwable thrown = t != null ? t : lastThrowable(params);
      if (thrown instanceof MismatchingMessageCorrelationException) {
        expected(logger, Level.DEBUG, "not correlated (yet): " + firstLine(thrown.getMessage()));
        return FilterReply.DENY;
      }
      if (thrown instanceof NullValueException && taskGone(thrown.getMessage())) {
        expected(logger, Level.INFO, "external task's execution gone: " + firstLine(thrown.getMessage()));
        return FilterReply.DENY;
      }
    } else if (REST_LOGGER.equals(name)) {
      // The REST logger puts the whole stack trace into the message: "ENGINE-REST-HTTP500 <trace>".
      String first = firstLine(format);
      if (first.contains(OptimisticLockingException.class.getName() + ":")
          || first.contains(NullValueException.class.getName() + ":") && taskGone(first)) {
        expected(logger, Level.INFO, "answered 500: " + first);
        return FilterReply.DENY;
      }
    }
    return FilterReply.NEUTRAL;
  }

  /** The execution of an external task ended while a worker still ran the task (an order's
   * cancellation interrupts it): "Cannot find execution with id X for external task Y". */
  static boolean taskGone(String message) {
    return message != null && message.contains("Cannot find execution with id") && message.contains("for external task");
  }

  private static void expected(Logger source, Level level, String line) {
    Logger target = source.getLoggerContext().getLogger(EXPECTED_LOGGER);
    if (level == Level.DEBUG) {
      target.debug(line);
    } else {
      target.info(line);
    }
  }

  static Throwable lastThrowable(Object[] params) {
    if (params == null || params.length == 0) {
      return null;
    }
    Object last = params[params.length - 1];
    return last instanceof Throwable thrown ? thrown : null;
  }

  static String firstLine(String text) {
    if (text == null) {
      return "";
    }
    int end = text.indexOf('\n');
    String line = (end < 0 ? text : text.substring(0, end)).strip();
    return line.length() > 300 ? line.substring(0, 300) + "..." : line;
  }
}
