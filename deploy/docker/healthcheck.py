#!/usr/bin/env python3
"""`collm-healthcheck`: ask a server's standard gRPC health service (grpc.health.v1) for status.

Installed into the images as /usr/local/bin/collm-healthcheck and used by the Dockerfile
HEALTHCHECK, the compose healthchecks and, when TLS is on, the Kubernetes exec probes
(Kubernetes' native `grpc:` probes speak plaintext only). Exit 0 only for SERVING; 1 for
NOT_SERVING, an unknown service, an unreachable server or a timeout. One line on stderr says
why. It needs only grpcio + grpcio-health-checking, which collm already depends on, so no
binary (grpc_health_probe) has to be downloaded and pinned into the images.

The health service stays open under bearer-token auth (collm_serve/auth.py), so no token is
sent. Every flag has an environment default so a bare `collm-healthcheck` fits any container.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _parse(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="collm-healthcheck", description=__doc__.splitlines()[0])
    p.add_argument("--address", default=env("COLLM_HEALTH_ADDRESS", "127.0.0.1:50061"),
                   help="host:port (env COLLM_HEALTH_ADDRESS)")
    p.add_argument("--service", default=env("COLLM_HEALTH_SERVICE", ""),
                   help="service name; '' = the whole server (env COLLM_HEALTH_SERVICE)")
    p.add_argument("--timeout", type=float, default=float(env("COLLM_HEALTH_TIMEOUT", "3")),
                   help="seconds (env COLLM_HEALTH_TIMEOUT)")
    p.add_argument("--ca", default=env("COLLM_HEALTH_CA"), help="CA bundle: use TLS (env COLLM_HEALTH_CA)")
    p.add_argument("--cert", default=env("COLLM_HEALTH_CERT"), help="client certificate for mTLS")
    p.add_argument("--key", default=env("COLLM_HEALTH_KEY"), help="client key for mTLS")
    p.add_argument("--server-name", default=env("COLLM_HEALTH_SERVER_NAME"),
                   help="TLS name to verify (the certificate rarely names 127.0.0.1)")
    return p.parse_args(argv)


def check(args: argparse.Namespace) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if args.ca:
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(args.ca).read_bytes(),
            private_key=Path(args.key).read_bytes() if args.key else None,
            certificate_chain=Path(args.cert).read_bytes() if args.cert else None,
        )
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        channel = grpc.secure_channel(args.address, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as e:
            return False, f"{args.address} service={args.service!r}: {e.code().name}: {e.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{args.address} service={args.service!r}: {status}"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        ok, message = check(args)
    except OSError as e:  # unreadable TLS files
        ok, message = False, f"cannot read TLS file: {e}"
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
