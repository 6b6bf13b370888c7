-- flowgate cluster sync: one call per replica per sync_interval (shim/src/cluster/script.rs).
-- Publishes this replica's report, reads the other live replicas' reports, and returns this
-- replica's leases and the other replicas' rates of its workloads. Writes only this replica's keys
-- (its hash and its member of the pool's set), which expire after ttl if it stops syncing.
--
-- KEYS[1] pool set     flowgate:{pool}:replicas   member = replica id, score = expiry (ms)
-- KEYS[2] own hash     flowgate:{pool}:r:<id>     b:<budget> = "held demand", w:<id> = "req tok"
-- ARGV: id, ttl_ms, prefix of replica hashes, max replicas read, local (1: this replica runs in
--       local mode and will not apply the grant: it holds only what it uses), expected replicas
--       (E > 0 just after an outage: replicas not back yet run on local shares floor(M/E), kept
--       free for them),
--       nb, nb x (budget, max, inflight, cap, demand): a budget is a backend's slots ("ip:port",
--       max = max_inflight) or its queue share ("q:ip:port", max = queue_depth_threshold,
--       inflight = sent since its last scrape); both are shared by the same rule below,
--       nw, nw x (workload id, requests/s, tokens/s)
-- Reply: { live replicas (self included), lease x nb, (requests/s, tokens/s) x nw as strings }
--
-- Leases, per budget of size M: every live replica's target is a max-min fair share of
-- M capped by its demand (in flight + queued), computed the same way by every replica from the
-- reports; what no one demands is split evenly. This replica is granted
-- min(target, M - sum of the others' held) (possibly below its in-flight count: a saturated
-- replica gives slots back as its requests finish), and holds max(grant, cap, inflight),
-- where cap is what it may use until it applies this grant (in local mode it holds
-- max(cap, inflight): its grant is not applied, so it must not keep others from theirs). So the sum of held <= M at every
-- step (each grant fits in what the others hold), except while a replica runs in local mode.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local ttl = tonumber(ARGV[2])
local prefix = ARGV[3]
local max_replicas = tonumber(ARGV[4])
local local_mode = ARGV[5] == '1'
local expected = tonumber(ARGV[6]) or 0

local i = 7
local nb = tonumber(ARGV[i]); i = i + 1
local backends = {}
for b = 1, nb do
  backends[b] = { addr = ARGV[i], max = tonumber(ARGV[i + 1]), inflight = tonumber(ARGV[i + 2]),
                  cap = tonumber(ARGV[i + 3]), demand = tonumber(ARGV[i + 4]) }
  i = i + 5
end
local nw = tonumber(ARGV[i]); i = i + 1
local workloads = {}
local wanted = {}
for w = 1, nw do
  workloads[w] = { id = ARGV[i], req = ARGV[i + 1], tok = ARGV[i + 2] }
  wanted[ARGV[i]] = { req = 0, tok = 0 }
  i = i + 3
end

-- The other live replicas' reports.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local members = redis.call('ZRANGE', KEYS[1], 0, max_replicas - 1)
local live = 1
local held = {}    -- addr -> { {id, held, demand}, ... } of the others
for _, r in ipairs(members) do
  if r ~= me then
    local h = redis.call('HGETALL', prefix .. r)
    if #h > 0 then
      live = live + 1
      for k = 1, #h, 2 do
        local f, v = h[k], h[k + 1]
        local kind = string.sub(f, 1, 2)
        if kind == 'b:' then
          local hd, dm = string.match(v, '^(%d+) (%d+)$')
          if hd then
            local a = string.sub(f, 3)
            held[a] = held[a] or {}
            table.insert(held[a], { id = r, held = tonumber(hd), demand = tonumber(dm) })
          end
        elseif kind == 'w:' then
          local acc = wanted[string.sub(f, 3)]
          if acc then
            local rq, tk = string.match(v, '^(%S+) (%S+)$')
            rq, tk = tonumber(rq), tonumber(tk)
            if rq and tk and rq == rq and tk == tk and rq >= 0 and tk >= 0 then
              acc.req = acc.req + rq
              acc.tok = acc.tok + tk
            end
          end
        end
      end
    end
  end
end

-- Max-min fair shares of m among entries {id, demand}: this replica's. Ties (and the remainder
-- of an uneven split) go by id rank rotated every ROTATE syncs' worth of time, so that no replica
-- keeps the odd slot for good; every replica computes the same order in the same period.
local ROTATE = 10
local epoch = math.floor(now / (ttl * ROTATE))
local function target(m, entries, my_demand)
  local all = { { id = me, demand = my_demand } }
  for _, e in ipairs(entries) do table.insert(all, { id = e.id, demand = e.demand }) end
  table.sort(all, function(a, b) return a.id < b.id end)
  for k, e in ipairs(all) do e.key = (k + epoch) % #all end
  table.sort(all, function(a, b)
    if a.demand ~= b.demand then return a.demand < b.demand end
    return a.key < b.key
  end)
  local left, share = m, {}
  for k, e in ipairs(all) do
    local fair = math.ceil(left / (#all - k + 1))
    local give = math.min(e.demand, fair)
    share[e.id] = give
    left = left - give
  end
  -- What nobody demands, split evenly (in id order for the remainder).
  table.sort(all, function(a, b) return a.key < b.key end)
  local each, extra = math.floor(left / #all), left % #all
  for k, e in ipairs(all) do
    share[e.id] = share[e.id] + each + ((k <= extra) and 1 or 0)
  end
  return share[me]
end

local reply = { live }
local fields = { 't', tostring(now) }
for b, d in ipairs(backends) do
  local others = held[d.addr] or {}
  local taken = 0
  for _, e in ipairs(others) do taken = taken + e.held end
  if expected > live then
    taken = taken + (expected - live) * math.max(math.floor(d.max / expected), 1)
  end
  local room = math.max(d.max - taken, 0)
  -- The grant may be below what is in flight (those places finish, no new one is taken); what
  -- this replica holds never is.
  local grant = math.min(target(d.max, others, d.demand), room)
  local mine = math.max(grant, d.cap, d.inflight)
  if local_mode then mine = math.max(d.cap, d.inflight) end
  reply[#reply + 1] = grant
  fields[#fields + 1] = 'b:' .. d.addr
  fields[#fields + 1] = mine .. ' ' .. d.demand
end
for _, w in ipairs(workloads) do
  local acc = wanted[w.id]
  reply[#reply + 1] = string.format('%.6f', acc.req)
  reply[#reply + 1] = string.format('%.6f', acc.tok)
  fields[#fields + 1] = 'w:' .. w.id
  fields[#fields + 1] = w.req .. ' ' .. w.tok
end

-- This replica's keys, replaced whole (a forgotten workload or backend leaves with the old hash).
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[1], now + ttl, me)
redis.call('PEXPIRE', KEYS[1], ttl)
return reply
