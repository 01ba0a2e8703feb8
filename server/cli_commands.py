"""Commands contributed by other parts (users, demo, audit) register on import here."""

from server import cli_users  # noqa: F401  (users create, keys rotate|list)
from server.cli_ledger import audit_cmd  # noqa: F401  (audit)
from server.demo import demo  # noqa: F401  (demo)
