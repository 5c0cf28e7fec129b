"""URL variables are ids: a path whose id is outside the id alphabet matches no route (a JSON 404).

Installed as the URL map's default converter, so every `<name>` variable (every one in this app names an
id) is checked without each route saying so; a future variable that is not an id says `<string:name>`.
The dashboard's pages get the same JSON 404 for such a path. Without it, `/api/executions/a:b` or
`/api/plans/%00` reached the database: a NUL byte is a 500 from PostgreSQL, and ids the API can never have
created are better answered before any lookup.
"""

from __future__ import annotations

from werkzeug.routing import BaseConverter

from orchestrator.ids import ID_PATTERN


class IdConverter(BaseConverter):
    # Werkzeug anchors and embeds this in the rule's regex; `to_python` is then the identity.
    regex = ID_PATTERN.pattern
