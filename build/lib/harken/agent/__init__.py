"""Harken device agent: microphone -> log-mel -> int8 model -> decision -> MQTT."""


def version() -> str:
    """The installed package's version ("unknown" when run from a bare checkout)."""
    from importlib.metadata import PackageNotFoundError, version as _pkg_version
    try:
        return _pkg_version("harken")
    except PackageNotFoundError:
        return "unknown"
