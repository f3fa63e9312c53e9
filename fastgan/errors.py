"""The one exception type for mistakes a user can fix (a bad flag, a missing path).

The command line prints its message on one line and exits with status 2, no traceback;
everything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A problem with the user's input; the message names the option or path at fault."""
