package org.edpo.camunda;

import org.camunda.bpm.engine.rest.security.auth.ProcessEngineAuthenticationFilter;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.web.servlet.FilterRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.core.Ordered;

/**
 * The engine's REST API requires HTTP basic auth: Camunda's own filter checks every request
 * under /engine-rest against the engine's users (GET /engine-rest/engine, the list of engines,
 * stays open). Cockpit and Tasklist have their own login and are not affected.
 *
 * <p>Authorization checks stay off (camunda.bpm.authorization.enabled, false by default): any
 * authenticated user may do anything. EDPO's one service account runs the whole process, so
 * authorizations would add engine queries to every call and protect nothing from it. Turning
 * them on needs authorizations for the service user (admin group or grants per resource).
 */
@Configuration
public class RestAuthentication {

  private static final Logger LOG = LoggerFactory.getLogger(RestAuthentication.class);

  @Bean
  public FilterRegistrationBean<ProcessEngineAuthenticationFilter> engineRestAuthentication(
      @Value("${spring.jersey.application-path:/engine-rest}") String restPath) {
    FilterRegistrationBean<ProcessEngineAuthenticationFilter> registration =
        new FilterRegistrationBean<>(new ProcessEngineAuthenticationFilter());
    registration.setName("camunda-auth");
    // Camunda's HTTP basic auth, a verified header remembered for seconds (RememberedBasicAuthentication).
    registration.addInitParameter("authentication-provider", RememberedBasicAuthentication.class.getName());
    // The path the filter strips before it tells engine requests from the open /engine list.
    registration.addInitParameter("rest-url-pattern-prefix", restPath);
    registration.addUrlPatterns(restPath + "/*");
    // fetch-and-lock long-polls on an asynchronous request: every filter on the way must allow it.
    registration.setAsyncSupported(true);
    registration.setOrder(Ordered.HIGHEST_PRECEDENCE + 10);
    LOG.info("{}/* requires HTTP basic auth (authorization checks off: any authenticated user may do anything)",
        restPath);
    return registration;
  }
}
