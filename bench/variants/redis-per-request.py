"""Shared limits (``storage.redis_url``) with one script call a request, as before admissions
were batched (bench/ab.py --key --redis)."""

from redis.exceptions import RedisError

from turnout.store import shared


async def admit(self, request):  # type: ignore[no-untyped-def]
    try:
        return (await self._call([(request, None)]))[0]
    except (RedisError, OSError) as exc:
        return await self._unreachable(request, exc)


shared.SharedQuotas.admit = admit  # type: ignore[method-assign]
