"""The backup server: state store, services, dispatcher, scheduler, REST API.

The server needs Python 3.11+ (its dependencies and code use 3.11 features); only the machine side
(repo/, storage/, protocol/, machine/) runs on 3.9-3.13. Importing the server on an older Python
stops here with the reason instead of a confusing error from deep inside a dependency.
"""

import sys

if sys.version_info < (3, 11):  # noqa: UP036 - the guard is for interpreters older than the target
    found = f"{sys.version_info[0]}.{sys.version_info[1]}"
    raise SystemExit(
        f"cloudkeep: the server needs Python 3.11 or later (found {found}); "
        "machines run the agent on 3.9+ with `python -m cloudkeep.machine`"
    )
