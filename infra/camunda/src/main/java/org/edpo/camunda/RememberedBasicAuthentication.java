package org.edpo.camunda;

import jakarta.servlet.http.HttpServletRequest;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.camunda.bpm.engine.IdentityService;
import org.camunda.bpm.engine.ProcessEngine;
import org.camunda.bpm.engine.identity.Group;
import org.camunda.bpm.engine.identity.Tenant;
import org.camunda.bpm.engine.rest.security.auth.AuthenticationResult;
import org.camunda.bpm.engine.rest.security.auth.impl.HttpBasicAuthenticationProvider;

/**
 * HTTP basic auth that remembers a verified Authorization header for a few seconds.
 *
 * <p>Camunda's provider checks the password and then the filter loads the user's groups and
 * tenants: three or more database queries and a password hash for every REST call, about 25
 * queries per order (pg_stat_statements during a burst). The services send the same header with
 * every call, so a header verified in the last {@link #REMEMBER_NANOS} seconds is taken with the
 * groups and tenants found then. A changed or removed password takes effect within that time;
 * a wrong header is never remembered, so every failed try is checked (and counted towards the
 * engine's lockout) as before. Headers are kept as SHA-256 digests, never as passwords.
 */
public class RememberedBasicAuthentication extends HttpBasicAuthenticationProvider {

  static final long REMEMBER_NANOS = 10_000_000_000L;
  /** Few clients send few distinct headers; past this many the memory is emptied. */
  static final int MAX_REMEMBERED = 64;

  private record Verified(String user, List<String> groups, List<String> tenants, long until) {}

  private static final Map<String, Verified> VERIFIED = new ConcurrentHashMap<>();

  @Override
  public AuthenticationResult extractAuthenticatedUser(HttpServletRequest request, ProcessEngine engine) {
    String header = request.getHeader("Authorization");
    if (header == null) {
      return super.extractAuthenticatedUser(request, engine);
    }
    String key = engine.getName() + ":" + digest(header);
    long now = System.nanoTime();
    Verified known = VERIFIED.get(key);
    if (known != null && now - known.until() < 0) {
      return result(known);
    }
    AuthenticationResult checked = super.extractAuthenticatedUser(request, engine);
    if (!checked.isAuthenticated()) {
      VERIFIED.remove(key);
      return checked;
    }
    IdentityService identity = engine.getIdentityService();
    String user = checked.getAuthenticatedUser();
    List<String> groups = new ArrayList<>();
    for (Group group : identity.createGroupQuery().groupMember(user).list()) {
      groups.add(group.getId());
    }
    List<String> tenants = new ArrayList<>();
    for (Tenant tenant : identity.createTenantQuery().userMember(user).includingGroupsOfUser(true).list()) {
      tenants.add(tenant.getId());
    }
    Verified verified = new Verified(user, List.copyOf(groups), List.copyOf(tenants), now + REMEMBER_NANOS);
    if (VERIFIED.size() >= MAX_REMEMBERED) {
      VERIFIED.clear();
    }
    VERIFIED.put(key, verified);
    return result(verified);
  }

  private static AuthenticationResult result(Verified verified) {
    AuthenticationResult result = AuthenticationResult.successful(verified.user());
    result.setGroups(verified.groups());
    result.setTenants(verified.tenants());
    return result;
  }

  private static String digest(String header) {
    try {
      MessageDigest sha = MessageDigest.getInstance("SHA-256");
      return HexFormat.of().formatHex(sha.digest(header.getBytes(StandardCharsets.UTF_8)));
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
  }
}
