"""The exception types the command line reports in one line, without a traceback.

UserError: a mistake the user can fix in the command (a bad flag, a missing path): exit
status 2. RunError: the job's surroundings failed it (a full disk): exit status 1.
Everything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A problem with the user's input; the message names the option or path at fault."""


class RunError(RuntimeError):
    """The machine failed the run (no space left for a checkpoint, ...); the message
    names the path at fault and what is left intact."""
