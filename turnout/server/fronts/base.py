"""What an HTTP front is: a dialect clients speak, mapped onto the gateway's one core API
(`Gateway.complete` / `Gateway.open_stream` with an OpenAI-shaped body).

A front module under turnout/server/fronts/ makes one `Front` (its error dialect, how it frames
a stream, how a finished reply looks in its dialect) and lists its `routes`, most of them made
with `Front.inference` and `Front.route`; turnout/server/fronts/__init__.py mounts them. Its
inference paths then get the pipeline's fast lookup and every stage, like any route.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from ...errors import GatewayError
from ...gateway import Gateway
from ...wire.types import JSON, Kind
from ..pipeline import Endpoint, Route
from ..responses import BytesResponse, Errors
from ..stream import ClientGone, Encoder, Stream, json_start, read_json, while_connected

__all__ = ["Front", "Parse"]

#: a request's parsed JSON body -> the gateway's OpenAI-shaped body, validated (a GatewayError
#: naming the field at fault otherwise); its "stream" says whether to stream the answer
Parse = Callable[[Any], JSON]


@dataclass(frozen=True, slots=True, eq=False)
class Front:
    name: str
    #: how its errors look, as a reply and (through the encoder) as a stream's last frame
    errors: Errors
    #: a stream's encoder, from the request's OpenAI-shaped body: a shared one for a front that
    #: keeps no state between chunks, else a new one per stream
    encoder: Callable[[JSON], Encoder]
    #: the gateway's OpenAI-shaped reply -> this front's (None: sent as it is)
    reply: Callable[[JSON], JSON] | None = None

    def route(
        self, path: str, endpoint: Endpoint, methods: tuple[str, ...] = ("GET",), **meta: Any
    ) -> Route:
        """A route of this front: its errors (a 405 included) in this front's dialect."""
        return Route(path, endpoint, methods, errors=self.errors, front=self.name, **meta)

    def inference(self, kind: Kind, parse: Parse) -> Endpoint:
        """The endpoint of an inference path: read the body (bounded), parse it, then either
        the whole answer (cancelled if the client leaves) or a `Stream`."""
        errors, reply, encoder = self.errors, self.reply, self.encoder

        async def endpoint(request: Request) -> ASGIApp:
            gateway: Gateway = request.app.state.gateway
            try:
                body = parse(await read_json(request, gateway.config.server.max_body_bytes))
                if body.get("stream") and kind != "embedding":
                    return Stream(gateway, kind, body, encoder(body), errors)
                done = await while_connected(request, gateway.complete(kind, body))
            except GatewayError as exc:
                return errors.response(exc)
            except ClientGone:
                return Response(status_code=499)  # nobody is listening; nginx's code for it
            out = done.body if reply is None else reply(done.body)
            return BytesResponse(orjson.dumps(out), json_start(done.target.provider.name))

        endpoint.__name__ = f"{self.name}_{kind}"
        return endpoint
