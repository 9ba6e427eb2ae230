package org.edpo.camunda;

import org.camunda.bpm.engine.IdentityService;
import org.camunda.bpm.engine.ProcessEngine;
import org.camunda.bpm.engine.identity.User;
import org.camunda.bpm.engine.impl.cfg.AbstractProcessEnginePlugin;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.stereotype.Component;

/**
 * The engine's users as the EDPO settings say, every time the engine starts: the service account
 * (EDPO_CAMUNDA_SERVICE_USER, created if missing) and the admin (EDPO_CAMUNDA_ADMIN_USER, which
 * the Camunda starter creates the first time only) get the passwords of the settings, so a
 * changed setting takes effect at the next start.
 *
 * <p>A process engine plugin, so it runs once the engine is built and before the web server
 * takes requests: no request sees the old passwords. (The starter's PostDeployEvent would come
 * only with a process application, which this server does not have.) Passwords are required:
 * without them the application does not start.
 */
@Component
public class EngineUsers extends AbstractProcessEnginePlugin {

  private static final Logger LOG = LoggerFactory.getLogger(EngineUsers.class);

  private final String serviceUser;
  private final String servicePassword;
  private final String adminUser;
  private final String adminPassword;

  public EngineUsers(
      @Value("${EDPO_CAMUNDA_SERVICE_USER:edpo}") String serviceUser,
      @Value("${EDPO_CAMUNDA_SERVICE_PASSWORD}") String servicePassword,
      @Value("${camunda.bpm.admin-user.id}") String adminUser,
      @Value("${EDPO_CAMUNDA_ADMIN_PASSWORD}") String adminPassword) {
    this.serviceUser = required("EDPO_CAMUNDA_SERVICE_USER", serviceUser);
    this.servicePassword = required("EDPO_CAMUNDA_SERVICE_PASSWORD", servicePassword);
    this.adminUser = required("EDPO_CAMUNDA_ADMIN_USER", adminUser);
    this.adminPassword = required("EDPO_CAMUNDA_ADMIN_PASSWORD", adminPassword);
  }

  private static String required(String variable, String value) {
    if (value == null || value.isBlank()) {
      throw new IllegalStateException(variable + " is empty: the engine's users need it (edpo infra up sets it)");
    }
    return value;
  }

  @Override
  public void postProcessEngineBuild(ProcessEngine engine) {
    IdentityService identity = engine.getIdentityService();
    User service = identity.createUserQuery().userId(serviceUser).singleResult();
    if (service == null) {
      service = identity.newUser(serviceUser);
      service.setFirstName("EDPO");
      service.setLastName("services");
      service.setPassword(servicePassword);
      identity.saveUser(service);
      LOG.info("service user '{}' created, password from EDPO_CAMUNDA_SERVICE_PASSWORD", serviceUser);
    } else {
      setPassword(identity, service, servicePassword);
      LOG.info("service user '{}': password set from EDPO_CAMUNDA_SERVICE_PASSWORD", serviceUser);
    }
    User admin = identity.createUserQuery().userId(adminUser).singleResult();
    if (admin == null) {
      // First start: the starter's own plugin creates it, with this password, in the group camunda-admin.
      LOG.info("admin user '{}' is created by the Camunda starter, password from EDPO_CAMUNDA_ADMIN_PASSWORD",
          adminUser);
    } else {
      setPassword(identity, admin, adminPassword);
      LOG.info("admin user '{}': password set from EDPO_CAMUNDA_ADMIN_PASSWORD", adminUser);
    }
  }

  /** A new password, and the user unlocked: failed logins with the old one must not lock the new one out. */
  private static void setPassword(IdentityService identity, User user, String password) {
    user.setPassword(password);
    identity.saveUser(user);
    identity.unlockUser(user.getId());
  }
}
