"""Remote unit platforms: tokens only over TLS, a configured CA bundle, a TLS relay.

pyspark's client sends a token without TLS only to a host written ``localhost`` (gRPC local
channel credentials); for every other host it switches to TLS with the system's root
certificates. :class:`EndpointTLS` makes that explicit and configurable: a remote endpoint
(``DataPlatform.endpoints`` / ``MARKET_SPARK_ENDPOINTS``) is reached over TLS verified against
:attr:`EndpointTLS.ca_file`, optionally presenting a client certificate.

Spark Connect servers speak plaintext gRPC. :class:`TlsRelay` terminates TLS in front of one
(ALPN ``h2``, optionally requiring client certificates) and forwards the bytes: the way to
expose a unit's loopback-bound server to another machine, and what the tests use to stand in
for a remote server with a self-signed CA. Envoy, nginx (``grpc_pass``) or stunnel do the
same job in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

from traitlets import Unicode
from traitlets.config import Configurable

_TOKEN_RE = re.compile(r"(;\s*token=)[^;]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """*url* with its token replaced: what logs and error messages may show."""
    return _TOKEN_RE.sub(r"\1<token>", url)


def url_host(url: str) -> str:
    return urlsplit(url.split(";", 1)[0]).hostname or "localhost"


def url_params(url: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in url.split(";")[1:]:
        if "=" in part:
            key, value = part.split("=", 1)
            params[key.strip().lower()] = value.strip()
    return params


def needs_tls(url: str) -> bool:
    """Whether a client must use TLS for *url*: any host but ``localhost`` that carries a token
    or asks for TLS (the rule pyspark's own client applies)."""
    params = url_params(url)
    if url_host(url) == "localhost" and params.get("use_ssl", "").lower() != "true":
        return False
    return "token" in params or params.get("use_ssl", "").lower() == "true"


class EndpointTLS(Configurable):
    """How the service verifies remote unit platforms (and authenticates to them)."""

    ca_file = Unicode(
        "",
        help="""PEM bundle of the CAs that sign remote Spark Connect endpoints' certificates.
        Empty: the system's root certificates. Notebooks get the same file through
        GRPC_DEFAULT_SSL_ROOTS_FILE_PATH.""",
    ).tag(config=True)

    cert_file = Unicode(
        "", help="PEM client certificate chain presented to remote endpoints (mutual TLS)."
    ).tag(config=True)

    key_file = Unicode(
        "", help="PEM private key of cert_file (keep it 0600; never logged)."
    ).tag(config=True)

    def connection(self, url: str) -> Any:
        """What to pass as ``SparkSession(connection=...)``: *url* itself for localhost, else a
        channel builder that uses TLS with the configured CA (and client certificate)."""
        if not needs_tls(url):
            return url
        return tls_channel_builder(url, self.ca_file, self.cert_file, self.key_file)


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def tls_channel_builder(url: str, ca_file: str = "", cert_file: str = "", key_file: str = ""):
    """A pyspark ``ChannelBuilder`` for *url* over TLS verified against *ca_file*."""
    import grpc
    from pyspark.sql.connect.client.core import DefaultChannelBuilder

    ca, cert, key = _read(ca_file), _read(cert_file), _read(key_file)
    if (cert is None) != (key is None):
        raise ValueError("EndpointTLS: cert_file and key_file go together")

    class TlsChannelBuilder(DefaultChannelBuilder):
        def toChannel(self) -> grpc.Channel:
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
            if self.token is not None:
                creds = grpc.composite_channel_credentials(
                    creds, grpc.access_token_call_credentials(self.token)
                )
            return self._secure_channel(self.endpoint, creds)

    return TlsChannelBuilder(url)


class TlsRelay:
    """Terminate TLS on ``listen_host:listen_port`` and relay to a plaintext gRPC server.

    Runs an asyncio loop in a daemon thread; :meth:`start` returns the port it listens on.
    With *client_ca_file*, clients must present a certificate signed by it.
    """

    def __init__(
        self,
        target: tuple[str, int],
        cert_file: str,
        key_file: str,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        client_ca_file: str = "",
    ):
        self.target = target
        self.listen = listen
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert_file, key_file)
        # gRPC clients insist on HTTP/2 being negotiated through ALPN.
        self.context.set_alpn_protocols(["h2"])
        if client_ca_file:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca_file)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def start(self) -> int:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, *self.listen, ssl=self.context)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name="tls-relay", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the TLS relay did not start")
        return self.port

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
