"""Errors that mean "the input is wrong", as opposed to a bug: the CLI prints them as one line."""


class UserError(Exception):
    """Bad input: a missing file, a corrupt checkpoint, an impossible option. Exit code 1."""

    exit_code = 1


class ConfigError(UserError):
    """A config that does not validate: unknown key, wrong type, missing group option. Exit code 2."""

    exit_code = 2
