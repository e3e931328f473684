"""Errors that mean "the user's input is wrong": the CLI prints them as one line and exits non-zero."""


class FFRunError(Exception):
    """Base class: a problem the user can fix, reported in one line without a traceback."""


class ConfigError(FFRunError):
    """A config value is missing, ill-typed or contradicts another one."""


class DataError(FFRunError):
    """A data file is missing or malformed."""


class CheckpointError(FFRunError):
    """A checkpoint is missing, corrupt, or does not match the configured network."""


class OutputError(FFRunError):
    """An output (run folder, checkpoint) cannot be written: the folder is read-only or the disk is full."""


class RegistryError(ConfigError):
    """A component name is unknown or taken twice, or a registered component (a plugin's, say) lacks a
    piece its kind requires."""


class PluginError(ConfigError):
    """A plugin module cannot be imported, or fails while registering its components."""
