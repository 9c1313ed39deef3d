"""Service functions: the one place administrator actions are validated and applied.

The REST API and the CLI are thin layers over these. Every function takes the ``ServerContext``
first; functions that change state take ``actor`` (a token name, or ``local``) and write an audit
row in the same transaction. They return pydantic views (``schemas``) that never carry secrets.
"""
