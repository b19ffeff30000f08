"""The one exception type users see: its message is a single line that says what to do."""


class MixerError(Exception):
    """Bad input (a file, a key, a shape, a model name); str(error) is the whole story."""
