"""The checks of single setting values: each raises SettingsError naming the setting."""

import os
from urllib.parse import urlsplit, urlunsplit


class SettingsError(ValueError):
    """A setting is missing or wrong; the message names it."""


def _positive(value, name):
    if value <= 0:
        raise SettingsError(f"{name} must be > 0, got {value}")


def _non_negative(value, name):
    if value < 0:
        raise SettingsError(f"{name} must be >= 0, got {value}")


def _scheme(*schemes):
    def check(value, name):
        try:
            scheme = urlsplit(value).scheme
        except ValueError as exc:  # "amqp://[broker": Invalid IPv6 URL
            raise SettingsError(f"{name} is not a valid URL ({exc})") from None
        if scheme not in schemes:
            raise SettingsError(f"{name} must start with one of {', '.join(s + '://' for s in schemes)}")
    return check


def split_urls(value: str) -> tuple[str, ...]:
    """A comma-separated list of URLs, each stripped of the whitespace around it."""
    return tuple(url.strip() for url in value.split(","))


def _urls(*schemes):
    """A comma-separated list of URLs (one cluster's nodes), each with one of `schemes`, all the same one."""
    each = _scheme(*schemes)

    def check(value, name):
        urls = split_urls(value)
        if not all(urls):
            raise SettingsError(f"{name} has an empty entry in its comma-separated list of URLs")
        for url in urls:
            each(url, name)
        if len({urlsplit(url).scheme for url in urls}) > 1:
            raise SettingsError(f"{name} must use one scheme for every node (all amqp:// or all amqps://)")
    return check


def redact_url(url: str) -> str:
    """The URL, or each of a comma-separated list of URLs, with its password replaced by ***."""
    return ",".join(_redact_one(part.strip()) for part in url.split(","))


def _redact_one(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _one_of(*choices):
    def check(value, name):
        if value not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return check


def _delays(value, name):
    if not value or any(d <= 0 for d in value):
        raise SettingsError(f"{name} must be a comma-separated list of positive seconds")


def _priority(value, name):
    if not 0 <= value <= 255:
        raise SettingsError(f"{name} must be between 0 (off) and 255, got {value}")


def _port(value, name):
    if not 0 <= value <= 65535:
        raise SettingsError(f"{name} must be a TCP port (1-65535), or 0 to turn it off; got {value}")


def parse_prices(text: str) -> dict[str, tuple[float, float]]:
    """`gpt-4o=2.5:10,my-model=0:0` -> {model: (input, output)} in USD per million tokens."""
    prices = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        model, _, pair = item.partition("=")
        price_in, _, price_out = pair.partition(":")
        prices[model.strip()] = (float(price_in), float(price_out))
    return prices


def _prices(value, name):
    try:
        parse_prices(value)
    except ValueError:
        raise SettingsError(f"{name} must look like 'gpt-4o=2.5:10,other-model=0.15:0.6'") from None


def _write_concern(value, name):
    if value != "majority" and not (value.isdigit() and int(value) >= 1):
        raise SettingsError(f"{name} must be 'majority' or a number of members >= 1, got {value!r}")


def _at_least(low):
    def check(value, name):
        if value < low:
            raise SettingsError(f"{name} must be at least {low:g}, got {value:g}")
    return check


def _between(low, high):
    def check(value, name):
        if not low <= value <= high:
            raise SettingsError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return check


def _patient_fields(value, name):
    from worker.disclosure import DisallowedField, parse_fields

    try:
        parse_fields(value)
    except DisallowedField as exc:
        raise SettingsError(f"{name}: {exc}") from None


def _file(value, name):
    if value and not os.access(value, os.R_OK):
        raise SettingsError(f"{name}: cannot read {value}")
