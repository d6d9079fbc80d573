"""Who may call what: bearer tokens and mTLS client identities mapped to roles, checked by one
server interceptor on every service (AgentService and OrchestratorService alike).

Roles (`Role`): `inference` may call everything that reads or generates (Generate,
GenerateStream, GetAgentInfo, ListAdapters, Abort; RunEpisode, StreamEpisode); `admin` may in
addition change what an agent serves (`ADMIN_METHODS`: LoadAdapter, ActivateAdapter,
RollbackAdapter, UnloadAdapter). Admin implies inference.

A caller's credentials: `authorization: Bearer <token>` metadata, and, on an mTLS port, the
identities of its verified client certificate (subject CN and every SAN, as gRPC's auth context
reports them). The caller's role is the higher of what its token and its certificate grant.
A token that is presented and wrong is refused even when the certificate would do (a bad
credential is never ignored). Outcomes:

    no credential that grants a role   -> UNAUTHENTICATED  (missing or invalid token; a verified
                                          certificate that no identities list names grants nothing)
    a role too low for the method      -> PERMISSION_DENIED (e.g. an inference token on LoadAdapter)

The standard health and reflection services stay open so probes (k8s, grpc_health_probe) and
`grpcurl list` work without secrets: they reveal nothing a client could not learn from the
public proto. Tokens are compared in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import inspect
from dataclasses import dataclass, field
from enum import IntEnum

import grpc

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")
ADMIN_METHODS = frozenset(f"/collm.v1.AgentService/{m}" for m in
                          ("LoadAdapter", "ActivateAdapter", "RollbackAdapter", "UnloadAdapter"))
# x509 fields of gRPC's auth context that name the client (SANs first: they are what TLS checks).
_IDENTITY_KEYS = ("x509_subject_alternative_name", "x509_common_name")


class Role(IntEnum):
    """Ordered: a higher role may do everything a lower one may."""

    inference = 1
    admin = 2


def required_role(method: str) -> Role:
    return Role.admin if method in ADMIN_METHODS else Role.inference


@dataclass(frozen=True)
class AuthPolicy:
    """Tokens and certificate identities -> role. Empty policy = auth off (`enabled` False):
    then any caller the transport admits (plaintext, TLS, or a CA-verified mTLS certificate)
    may call everything, as before roles existed."""

    tokens: dict[str, Role] = field(default_factory=dict, repr=False)  # secrets: never in a log line
    identities: dict[str, Role] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.tokens or self.identities)

    @classmethod
    def build(cls, token: str | None, admin_token: str | None = None,
              identities: dict[str, list[str]] | None = None) -> "AuthPolicy":
        """The one rule that turns configured credentials into a policy (agents and orchestrator).

        `token` alone (no `admin_token`) grants admin: a deployment that had one token keeps
        working as before, trainer pushes included. With `admin_token` set, `token` is the
        inference token. Identities: role name -> certificate identities (CN or SAN).
        """
        tokens: dict[str, Role] = {}
        if token:
            tokens[token] = Role.inference if admin_token else Role.admin
        if admin_token:
            if admin_token == token:
                raise ValueError("admin_token must differ from auth_token (one token cannot hold two roles)")
            tokens[admin_token] = Role.admin
        by_identity: dict[str, Role] = {}
        for role_name, names in (identities or {}).items():
            for name in names:
                role = Role[role_name]
                by_identity[name] = max(role, by_identity.get(name, role))
        return cls(tokens, by_identity)

    def _token_role(self, given: str | bytes) -> Role | None:
        given = given.encode() if isinstance(given, str) else given
        found = None
        for token, role in self.tokens.items():  # every token compared: time does not say which matched
            if hmac.compare_digest(given, f"Bearer {token}".encode()):
                found = role
        return found

    def _identities(self, auth_context: dict) -> list[str]:
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v)
                for key in _IDENTITY_KEYS for v in auth_context.get(key, ())]

    def check(self, method: str, metadata, auth_context: dict) -> tuple[grpc.StatusCode, str] | None:
        """None when the call may proceed, else (status code, message)."""
        need = required_role(method)
        given = dict(metadata or ()).get("authorization")
        names = self._identities(auth_context or {})
        role = None
        if given is not None:
            role = self._token_role(given)
            if role is None:
                return grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token"
        cert_role = max((self.identities[n] for n in names if n in self.identities), default=None)
        if cert_role is not None:
            role = max(role or cert_role, cert_role)
        if role is None:
            unmapped = f"; client certificate {names[0]!r} has no role" if names and self.identities else ""
            return (grpc.StatusCode.UNAUTHENTICATED,
                    f"missing authorization metadata (expected 'Bearer <token>'){unmapped}")
        if role < need:
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"{method.rsplit('/', 1)[-1]} needs the {need.name} role; this caller has {role.name} "
                    "(use the admin token, COLLM_ADMIN_TOKEN)")
        return None


def checked(check, behaviour):
    """A grpc.aio handler behaviour that first awaits `check(request_or_iterator, context)` (which
    aborts the call to refuse it), then runs `behaviour`. An async-generator behaviour (a server
    stream) is relayed and closed whatever happens, so a cancelled call closes the servicer's
    generator at once; a coroutine (unary, or context.write style) is awaited. One definition for
    every interceptor that guards calls (`AuthInterceptor`, rpc.py `DecodeErrorInterceptor`)."""
    if not inspect.isasyncgenfunction(behaviour):
        async def call(request_or_iterator, context):
            await check(request_or_iterator, context)
            return await behaviour(request_or_iterator, context)
        return call

    async def stream(request_or_iterator, context):
        await check(request_or_iterator, context)
        responses = behaviour(request_or_iterator, context)
        try:
            async for response in responses:
                yield response
        finally:
            await responses.aclose()
    return stream


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler outside `OPEN_SERVICES` with `policy.check`, run at call time: the
    client certificate is only known to the call's context, not to `intercept_service`."""

    def __init__(self, policy: AuthPolicy):
        self.policy = policy

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        policy, metadata = self.policy, handler_call_details.invocation_metadata

        async def admit(request_or_iterator, context) -> None:
            refused = policy.check(method, metadata, context.auth_context())
            if refused is not None:
                await context.abort(*refused)

        for kind, make in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        ):
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return make(checked(admit, behaviour), handler.request_deserializer, handler.response_serializer)
        return handler
