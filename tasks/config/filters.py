"""Quoting for the three rendered files. Templates stay dumb; every escape lives here.

Each filter is named for the syntax it quotes into, and each is proven with hostile values in
tests/unit/test_filters.py against the real parsers (PyYAML, python-dotenv, Compose's rules).
"""

from __future__ import annotations

import ipaddress
import json
import re
from urllib.parse import quote


def dotenv_quote(value: str) -> str:
    """Quote a value for a `.env` read by Docker Compose v2 and python-dotenv.

    Compose reads an unquoted `$NAME` as interpolation and has no way to put `'` inside single
    quotes, so every value is double-quoted: `\\` and `"` are backslash-escaped, a newline becomes
    `\\n`, and `$` is doubled (Compose turns `$$` into `$`, and never re-reads the result).
    """
    if "\x00" in value or "\r" in value:
        raise ValueError("NUL and carriage return cannot be stored in a .env file")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("$", "$$")
    return f'"{escaped}"'


def dotenv_unquote(text: str) -> str:
    """Inverse of dotenv_quote, for reading back a `.env` this package wrote on a host."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    out, chars, i = [], text[1:-1], 0
    while i < len(chars):
        pair = chars[i : i + 2]
        if pair in ("\\\\", '\\"'):
            out.append(pair[1])
            i += 2
        elif pair == "\\n":
            out.append("\n")
            i += 2
        elif pair == "$$":
            out.append("$")
            i += 2
        else:
            out.append(chars[i])
            i += 1
    return "".join(out)


def yaml_quote(value: object) -> str:
    """A YAML scalar that loads back to exactly `value` (JSON is a subset of YAML 1.2 and PyYAML
    reads JSON strings, numbers and booleans identically)."""
    return json.dumps(value, ensure_ascii=False)


def url_component(value: str) -> str:
    """Percent-encode a URL userinfo or path part: nothing is left that a URL parser splits on."""
    return quote(value, safe="")


def url_host(address: str) -> str:
    """A host name or IP address as a URL, a Caddy upstream or a Compose port mapping holds it: IPv6 in
    brackets. The package's one such helper."""
    return f"[{address}]" if ":" in address else address


def cidr(address: str) -> str:
    """One address as the network pg_hba.conf and iptables take (10.0.0.5 -> 10.0.0.5/32)."""
    return str(ipaddress.ip_network(address, strict=False))


def caddy_quote(value: object) -> str:
    """A Caddyfile token: as it is when it holds only characters that never split or open anything,
    else double-quoted. Caddy's lexer treats a backslash inside quotes differently across versions,
    so a value with a quote, a backslash or a line break is refused rather than escaped."""
    text = str(value)
    if any(c in text for c in '"\\\n\r'):
        raise ValueError(f"a Caddyfile token cannot hold a quote, backslash or line break: {text!r}")
    if text not in ("{", "}") and re.fullmatch(r"[A-Za-z0-9._:/{}@%?=&+\[\]-]+", text):
        return text
    return f'"{text}"'


FILTERS = {
    "caddy": caddy_quote,
    "dotenv": dotenv_quote,
    "yaml": yaml_quote,
    "urlpart": url_component,
    "url_host": url_host,
    "cidr": cidr,
}
