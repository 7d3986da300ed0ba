"""The fleet's LLM limits in Redis: GCRA buckets, leased slots, a cool-down and the day's spend, atomic in Lua."""

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.ratepolicy import GRANTED, Limits, Verdict

SPEND_TTL_SECONDS = 2 * 86400
SLOT_POLL_SECONDS = 0.05  # slots free up when a holder finishes: look again this often

# Every script reads the clock with TIME, so all VMs share Redis's clock, whatever their own say.
# GCRA: a bucket is one "theoretical arrival time" (TAT). A call of weight w costs w * interval seconds;
# it may start while TAT + cost stays within `tolerance` (burst seconds, or the cost itself when one
# call is bigger than the burst) of now. A key expires once its bucket is full again.
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""

_STORE_TAT = """
local function store_tat(key, tat, now)
  if tat > now then
    redis.call('SET', key, string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
  else
    redis.call('DEL', key)
  end
end
"""

# KEYS: requests TAT, tokens TAT, slots, cool-down, day's spend
# ARGV: request interval, request tolerance, token interval, token tolerance, tokens,
#       max slots, holder, lease seconds, budget, slot poll seconds
ACQUIRE = _NOW + _STORE_TAT + """
local cool = tonumber(redis.call('GET', KEYS[4]) or '0')
if cool > now then return {'cooldown', tostring(cool - now)} end
local budget = tonumber(ARGV[9])
if budget > 0 and tonumber(redis.call('GET', KEYS[5]) or '0') >= budget then return {'budget', '0'} end
local names, weights, tats = {'requests', 'tokens'}, {1, tonumber(ARGV[5])}, {}
local reason, wait = '', 0
for i = 1, 2 do
  local interval = tonumber(ARGV[2 * i - 1])
  if interval > 0 then
    local tat = math.max(tonumber(redis.call('GET', KEYS[i]) or '0'), now)
    local cost = weights[i] * interval
    local over = tat + cost - now - math.max(tonumber(ARGV[2 * i]), cost)
    if over > 0.000001 and over > wait then reason, wait = names[i], over end
    tats[i] = tat + cost
  end
end
if wait > 0 then return {reason, tostring(wait)} end
local slots = tonumber(ARGV[6])
if slots > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= slots then
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    return {'concurrency', tostring(math.min(tonumber(first[2]) - now, tonumber(ARGV[10])))}
  end
  local lease = tonumber(ARGV[8])
  redis.call('ZADD', KEYS[3], now + lease, ARGV[7])
  redis.call('PEXPIRE', KEYS[3], math.ceil(lease * 1000) + 1000)
end
for i = 1, 2 do
  if tats[i] then store_tat(KEYS[i], tats[i], now) end
end
return {'', '0'}
"""

# KEYS: tokens TAT, slots, day's spend. ARGV: token interval, token delta (real - estimate), holder, cost, spend TTL
# A negative delta gives back what was over-estimated; a positive one charges the rest (the bucket may go
# into debt: later calls wait). Returns the day's spend.
RELEASE = _NOW + _STORE_TAT + """
local interval, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
if interval > 0 and delta ~= 0 then
  store_tat(KEYS[1], math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + delta * interval, now)
end
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
if tonumber(ARGV[4]) > 0 then
  local spent = redis.call('INCRBYFLOAT', KEYS[3], ARGV[4])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  return spent
end
return redis.call('GET', KEYS[3]) or '0'
"""

# KEYS: cool-down. ARGV: seconds. Moves the shared deadline later, never earlier; returns seconds left.
COOLDOWN = _NOW + """
local wanted = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if wanted > current then
  redis.call('SET', KEYS[1], string.format('%.6f', wanted), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
  current = wanted
end
return tostring(current - now)
"""

# KEYS: requests TAT, tokens TAT, cool-down. ARGV: request interval, tolerance, token interval, tolerance, tokens.
# How long an acquire of `tokens` would wait now for the cool-down and the buckets (read only).
PEEK = _NOW + """
local wait = math.max(tonumber(redis.call('GET', KEYS[3]) or '0') - now, 0)
local weights = {1, tonumber(ARGV[5])}
for i = 1, 2 do
  local interval = tonumber(ARGV[2 * i - 1])
  if interval > 0 then
    local tat = math.max(tonumber(redis.call('GET', KEYS[i]) or '0'), now)
    local cost = weights[i] * interval
    wait = math.max(wait, tat + cost - now - math.max(tonumber(ARGV[2 * i]), cost))
  end
end
return tostring(wait)
"""


def connect(url: str, timeout: float = 0.5) -> redis.Redis:
    """A client fit for the limiter: short timeouts and one immediate retry, so an outage turns into the
    fallback within about a second (redis-py's default, ten retries with backoff, would hold threads for seconds).
    A retried script may charge a bucket twice (stricter, never looser); the holder id makes a slot's ZADD
    idempotent."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 1), health_check_interval=0)


class RedisLedger:
    """One round trip per operation; every method raises redis.RedisError when Redis is away."""

    def __init__(self, client: redis.Redis, prefix: str, limits: Limits):
        self.client = client
        self.prefix = prefix
        self.limits = limits
        self.keys = {name: f"{prefix}llm:{name}" for name in ("requests", "tokens", "slots", "cooldown")}
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._cooldown = client.register_script(COOLDOWN)
        self._peek = client.register_script(PEEK)

    def spend_key(self, day: str) -> str:
        return f"{self.prefix}llm:spend:{day}"

    def _bucket_args(self, tokens: int) -> list:
        limits = self.limits
        burst = limits.burst_seconds
        return [limits.request_interval, burst, limits.token_interval, burst, tokens]

    def try_acquire(self, tokens: int, holder: str, day: str) -> Verdict:
        keys = [self.keys["requests"], self.keys["tokens"], self.keys["slots"], self.keys["cooldown"],
                self.spend_key(day)]
        limits = self.limits
        reason, wait = self._acquire(keys, [
            *self._bucket_args(tokens), limits.max_concurrency, holder, limits.lease_seconds,
            limits.budget_usd_per_day, SLOT_POLL_SECONDS,
        ])
        return GRANTED if not reason else Verdict(False, reason.decode(), float(wait))

    def release(self, holder: str, token_delta: int, cost_usd: float, day: str) -> float:
        """Give the slot back, settle the tokens, add the spend; returns the day's spend."""
        keys = [self.keys["tokens"], self.keys["slots"], self.spend_key(day)]
        spent = self._release(keys, [self.limits.token_interval, token_delta, holder, repr(float(cost_usd)),
                                     SPEND_TTL_SECONDS])
        return float(spent)

    def cooldown(self, seconds: float) -> float:
        """Every acquire in the fleet waits at least `seconds` from now; returns the seconds left."""
        return float(self._cooldown([self.keys["cooldown"]], [seconds]))

    def peek(self, tokens: int) -> float:
        keys = [self.keys["requests"], self.keys["tokens"], self.keys["cooldown"]]
        return max(0.0, float(self._peek(keys, self._bucket_args(tokens))))

    def spent(self, day: str) -> float:
        return float(self.client.get(self.spend_key(day)) or 0)

    def add_spend(self, day: str, cost_usd: float) -> float:
        """Spend made while Redis was away, written back when it returns."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.incrbyfloat(self.spend_key(day), cost_usd)
            pipe.expire(self.spend_key(day), SPEND_TTL_SECONDS)
            spent, _ = pipe.execute()
        return float(spent)
