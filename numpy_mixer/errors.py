"""The one exception type users see: its message is a single line that says what to do."""


class MixerError(Exception):
    """Bad input (a file, a key, a shape, a model name); str(error) is the whole story."""


def first_line(error):
    """The first line of a foreign exception's message (its type's name if it has none), to quote in one."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
