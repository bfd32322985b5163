"""A plugin module whose client library is missing."""

import runa_message_missing_client_library  # noqa: F401
