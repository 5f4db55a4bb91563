"""The synthesis routes: plan -> call the router -> respond.

``SynthesisRoute`` is the ASGI app of one synthesis API (OpenAI's, the native one, the ``/tts_url``
drop-in). Its ``parse`` step (``speech_router.api.speech``) turns the API's body into a ``Plan``;
``plan.prepare`` checks it; ``dispatch`` hands it to ``Router.synthesize`` (or fans a long text out
across the fleet, or serves it from the cache); ``respond`` makes the response. What happened is
noted on the request's ``Exchange``, which the edge's observer counts and logs once the response is
done. The handler is an ASGI app rather than a Starlette endpoint so that audio passes through one
``send`` wrapper (the edge's) and no task group.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..cache.speech import SpeechCache
from ..config.models import Settings
from ..errors import SpeechRouterError
from ..fanout import fan_out, plan_segments
from ..router.dispatch import Dispatched, Router
from ..types import SynthesisRequest
from .errors import error_response
from .gate import exchange_of
from .plan import Plan, prepare
from .respond import AudioStream, cached_answer, respond
from .spec import ErrorShape
from .state import AppState, app_state
from .watch import RequestWatch

#: an API's step from its request to a plan (reads and validates the body)
Parse = Callable[[Request, AppState], Awaitable[Plan]]


class SynthesisRoute:
    """The ASGI app of one synthesis API; ``parse`` reads its body."""

    def __init__(self, parse: Parse) -> None:
        self.parse = parse

    def __repr__(self) -> str:
        return f"SynthesisRoute({self.parse.__name__})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        state = app_state(request)
        ex = exchange_of(scope)
        ex.counted = True  # every answer from here on counts in requests_total, refusals included
        watch = RequestWatch(receive)
        response: Response
        try:
            plan = await self.parse(request, state)
            prepare(state, plan, scope["headers"], ex)
            if plan.cache_key is not None and (hit := await state.cache.lookup(plan.sreq.model, "response",
                                                                                plan.cache_key)) is not None:
                response = cached_answer(hit, plan, ex)
            else:
                watch.start()  # the body is read: from now on the connection's next message is its end
                with watch.guard():
                    dispatched = await dispatch(state.router, state.settings,
                                                state.cache if plan.cache_key is not None else None, plan)
                    response = await respond(dispatched, plan, ex, state.cache, watch)
        except SpeechRouterError as exc:
            response = error_response(exc, ex.route.errors if ex.route is not None else ErrorShape.OPENAI)
        if not isinstance(response, AudioStream):
            watch.stop()  # the work is done: a client leaving now only cuts what uvicorn sends
        await response(scope, receive, send)


async def dispatch(router: Router, settings: Settings, cache: SpeechCache | None, plan: Plan) -> Dispatched:
    """Call the router: a long text fans out across the fleet, its segments cached when the model opts in
    (``cache``); any other text is one request."""
    sreq: SynthesisRequest = plan.sreq
    texts = plan_segments(router, sreq)
    if not texts:
        return await router.synthesize(sreq, priority=plan.priority)
    segments = cache if cache is not None and cache.segments_enabled(settings, sreq) else None
    return await fan_out(router, sreq, priority=plan.priority, cache=segments, texts=texts)
