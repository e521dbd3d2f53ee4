"""Connection URLs as operators may see them: without any credential, in every form the clients accept.

redis-py (and Supabase's client) take a password in the user info (`redis://user:pw@host`), in query
parameters (`?password=pw`, any name the client passes through as a keyword), and a password with an
unencoded `#`, `/`, `?` or `@` splits the URL in places a URL parser does not expect (`redis://:pa#ss@host`
parses as host `:pa` and fragment `ss@host`). So this does not trust a parser: everything up to the last `@`
is user info, every query value whose name is not a known harmless option is replaced, and a fragment is
never shown.
"""
from __future__ import annotations

import re

HIDDEN = "***"

# Query options of redis-py's URL form that carry no secret (its URL_QUERY_ARGUMENT_PARSERS and TLS files).
HARMLESS_QUERY = frozenset({
    "db", "socket_timeout", "socket_connect_timeout", "socket_read_size", "socket_keepalive", "retry_on_timeout",
    "retry_on_error", "max_connections", "health_check_interval", "ssl_check_hostname", "ssl_include_verify_flags",
    "ssl_exclude_verify_flags", "ssl_min_version", "timeout", "protocol", "legacy_responses", "ssl_cert_reqs",
    "ssl_ca_certs", "ssl_ca_path", "client_name",
})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def redacted_url(url: str) -> str:
    """`url` with its user info reduced to `***`, secret query values to `***` and no fragment. A text that
    is not a `scheme://` URL at all is hidden whole (it may be a password pasted in the wrong place)."""
    match = _SCHEME.match(url)
    if match is None:
        return HIDDEN if url else ""
    rest = url[match.end():]
    prefix = match.group(0)
    if "@" in rest:  # the last `@` ends the user info, whatever the password contains
        rest = rest[rest.rindex("@") + 1:]
        prefix += f"{HIDDEN}@"
    rest, hash_sign, _ = rest.partition("#")
    rest, question, query = rest.partition("?")
    shown = prefix + rest
    if question:
        shown += "?" + "&".join(_query_item(item) for item in query.split("&") if item)
    if hash_sign:
        shown += f"#{HIDDEN}"
    return shown


def _query_item(item: str) -> str:
    name, equals, _ = item.partition("=")
    if name.lower() in HARMLESS_QUERY and equals:
        return item
    return f"{name}={HIDDEN}" if name.isascii() and name.replace("_", "").isalnum() else f"{HIDDEN}={HIDDEN}"
