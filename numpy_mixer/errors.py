"""The one exception type users see: its message is a single line that says what to do."""


class MixerError(Exception):
    """Bad input (a file, a key, a shape, a model name); str(error) is the whole story."""


def positive_int(value, name):
    """value as an int if it is a whole number >= 1 (a NumPy integer too, not a bool), else a MixerError."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise MixerError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def first_line(error):
    """The first line of a foreign exception's message (its type's name if it has none), to quote in one."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
