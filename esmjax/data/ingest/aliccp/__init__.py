"""The raw Ali-CCP converter (`python -m esmjax.data.aliccp`): the command and its stages
(`convert`, `stages`), the field spec (`spec`), the line parser (`parse`) and the worker tasks
(`work`).

May import: `esmjax.common`, `esmjax.exits`, `esmjax.data.format` and `esmjax.data.ingest`.
"""
