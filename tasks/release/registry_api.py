"""The image registry's HTTP API (Docker Registry v2): read a tag's digest, retag or delete a manifest. The
credentials go only to a token realm on the registry's own host:port or in ``registry_allowed_realms``."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable

import httpx

from tasks.release.engine import DeployStepError
from tasks.settings import get_settings
from tasks.settings.sections import ReleaseSettings

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = f"{MANIFEST_V2}, application/vnd.docker.distribution.manifest.list.v2+json, " + (
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
)


def registry_credentials(release: ReleaseSettings) -> tuple[str | None, str | None]:
    """Registry user and password: from the settings (environment), or a Prefect Secret block."""
    password = release.registry_password.get_secret_value() if release.registry_password else None
    if password is None and release.registry_secret_block:
        from prefect.blocks.system import Secret

        password = str(Secret.load(release.registry_secret_block).get())
    return release.registry_username, password


def registry_args(release: ReleaseSettings) -> tuple[str, str, str | None, str | None]:
    """Registry, repository, user and password: the leading arguments of the registry calls."""
    return release.image_registry, release.image_repository, *registry_credentials(release)


def remote_repository(registry: str, repository: str) -> str:
    """``registry/repository`` unless the repository already names the registry."""
    return repository if repository.startswith(registry.rstrip("/") + "/") else f"{registry}/{repository}"


def registry_base_url(registry: str) -> str:
    """``http://`` for loopback registries (what Docker allows without TLS), else ``https://``."""
    if registry.startswith(("http://", "https://")):
        return registry.rstrip("/")
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    insecure = host in {"localhost", "127.0.0.1", "[::1]"} or host.startswith("127.")
    return f"{'http' if insecure else 'https'}://{registry}"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(url: httpx.URL) -> tuple[str, int | None]:
    return url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme)


def _shown_host(url: httpx.URL) -> str:
    """``host`` or ``host:port`` as the URL names it (IPv6 in brackets), the form the setting takes."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port else host


def _realm_is_trusted(realm: httpx.URL, registry: httpx.URL, allowed: Iterable[str]) -> bool:
    """Whether ``realm`` may receive the credentials of ``registry``: the same host and port (default ports
    count), or an entry of ``allowed``: ``host:port``, or ``host`` alone for the realm scheme's default port."""
    here = _host_port(realm)
    if here == _host_port(registry):
        return True
    for text in filter(None, (entry.strip() for entry in allowed)):
        with contextlib.suppress(httpx.InvalidURL):
            parsed = httpx.URL(text if "://" in text else f"{realm.scheme}://{text}")
            if parsed.host and _host_port(parsed) == here:
                return True
    return False


def _bearer_token(
    http: httpx.Client, challenge: str, auth: tuple[str, str] | None, registry_url: str
) -> str | None:
    """Token for a Bearer challenge; credentials go only to an allowed realm, else :class:`DeployStepError`."""
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = params.pop("realm", None)
    if not realm:
        return None
    registry = httpx.URL(registry_url)
    try:
        realm_url = registry.join(realm)  # an absolute realm stays as it is
    except httpx.InvalidURL as exc:
        raise DeployStepError(
            "push", f"{_shown_host(registry)} names an unusable token realm {realm!r}: {exc}"
        ) from None
    allowed = get_settings().release.registry_allowed_realms
    if auth is not None and not _realm_is_trusted(realm_url, registry, allowed):
        host = _shown_host(realm_url)
        raise DeployStepError(
            "push",
            f"registry {_shown_host(registry)} names the token realm {host} "
            f"({realm_url.scheme}://{host}{realm_url.path}), which is neither the registry's own host nor "
            f"in the setting registry_allowed_realms; its credentials were not sent there. If {host} is this "
            f"registry's token server, allow it: LOANRISK_REGISTRY_ALLOWED_REALMS='[\"{host}\"]' (or "
            f"registry_allowed_realms in loanrisk.toml)",
        )
    resp = http.get(realm_url, params=params, auth=auth)
    if resp.status_code != 200:
        return None
    body = resp.json()
    return body.get("token") or body.get("access_token")


def _registry_call(
    method: str,
    url: str,
    username: str | None,
    password: str | None,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    """One registry HTTP API call with Basic credentials, answering a Bearer challenge when the registry uses
    token auth. Raises :class:`DeployStepError` when the registry cannot be reached."""
    auth = (username, password or "") if username else None
    try:
        with httpx.Client(timeout=30) as http:
            resp = http.request(method, url, headers=headers, content=content, auth=auth)
            challenge = resp.headers.get("WWW-Authenticate", "")
            if resp.status_code == 401 and challenge.lower().startswith("bearer"):
                token = _bearer_token(http, challenge, auth, url)
                if token:
                    bearer = {**(headers or {}), "Authorization": f"Bearer {token}"}
                    resp = http.request(method, url, headers=bearer, content=content)
    except httpx.HTTPError as exc:
        raise DeployStepError("push", f"{url} unreachable: {type(exc).__name__}: {exc}") from exc
    return resp


def _manifest_url(registry: str, repository: str, reference: str) -> tuple[str, str]:
    name = repository.removeprefix(registry.rstrip("/") + "/")
    return f"{registry_base_url(registry)}/v2/{name}/manifests/{reference}", name


def tag_digest(
    registry: str, repository: str, tag: str, username: str | None, password: str | None
) -> str | None:
    """The digest ``repository:tag`` has in the registry's HTTP API (``Docker-Content-Digest``), or None when it
    has no such tag. ``tag`` may also be a digest (``sha256:...``): then the answer says whether it holds it."""
    url, _ = _manifest_url(registry, repository, tag)
    resp = _registry_call("GET", url, username, password, headers={"Accept": MANIFEST_ACCEPT})
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise DeployStepError("push", f"{url} answered HTTP {resp.status_code}: {resp.text[:300]}")
    if digest := resp.headers.get("Docker-Content-Digest"):
        return digest
    raise DeployStepError("push", f"{url} answered without a Docker-Content-Digest header")


def registry_digest(
    registry: str, repository: str, tag: str, username: str | None, password: str | None
) -> str:
    """:func:`tag_digest`, raising :class:`DeployStepError` when the registry has no such tag."""
    if digest := tag_digest(registry, repository, tag, username, password):
        return digest
    raise DeployStepError("push", f"{registry} has no {_manifest_url(registry, repository, tag)[1]}:{tag}")


def registry_retag(
    registry: str, repository: str, digest: str, tag: str, username: str | None, password: str | None
) -> str:
    """Point ``repository:tag`` at the manifest ``digest`` already in the registry (read by digest, put under the
    tag byte for byte, confirmed; no local image needed, idempotent); returns the digest."""
    step = f"tag {tag}"
    url, name = _manifest_url(registry, repository, digest)
    got = _registry_call("GET", url, username, password, headers={"Accept": MANIFEST_ACCEPT})
    if got.status_code != 200:
        raise DeployStepError(step, f"{registry} has no manifest {name}@{digest} (HTTP {got.status_code})")
    media_type = got.headers.get("Content-Type", MANIFEST_V2).split(";")[0]
    put_url, _ = _manifest_url(registry, repository, tag)
    put = _registry_call(
        "PUT", put_url, username, password, headers={"Content-Type": media_type}, content=got.content
    )
    if put.status_code not in (200, 201):
        raise DeployStepError(
            step, f"{registry} refused {name}:{tag} -> {digest}: HTTP {put.status_code} {put.text[:300]}"
        )
    if (held := registry_digest(registry, repository, tag, username, password)) != digest:
        raise DeployStepError(step, f"{registry} holds {held} for {name}:{tag}, expected {digest}")
    return digest


def delete_manifest(
    registry: str, repository: str, digest: str, username: str | None, password: str | None
) -> None:
    """Delete the manifest ``digest`` (and every tag on it) of a build that never served, if the registry has it."""
    url, name = _manifest_url(registry, repository, digest)
    resp = _registry_call("DELETE", url, username, password)
    if resp.status_code not in (200, 202, 404):
        status = f"HTTP {resp.status_code} {resp.text[:200]}"
        raise DeployStepError("push", f"{registry} refused to delete {name}@{digest}: {status}")
