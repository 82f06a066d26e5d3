package persist

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisStoreConfig configures a RedisStore. The zero value is not the
// default (StateTTL 0 means "never expire"): start from
// DefaultRedisStoreConfig.
type RedisStoreConfig struct {
	// KeyPrefix starts every key. Default "lookback". It must not contain
	// '{' or '}', which would move the hash tag.
	KeyPrefix string
	// ClaimTTL is how long an unrenewed claim protects a partition against
	// a claimant with a lower generation. Default DefaultClaimTTL.
	ClaimTTL time.Duration
	// StateTTL expires a user's state this long after its last write, so
	// that users who are gone stop costing memory; 0 keeps states forever.
	// Default 8 days: longer than the longest lookback window (7 days),
	// so an expired state held nothing attribution could still use.
	StateTTL time.Duration
	// MaxCallBytes bounds the states one script call carries (user keys
	// plus encoded states). A partition checkpoint over it is split into
	// several calls (see Commit). Default 32 MiB.
	MaxCallBytes int
}

// DefaultRedisStoreConfig returns the defaults.
func DefaultRedisStoreConfig() RedisStoreConfig {
	return RedisStoreConfig{
		KeyPrefix:    "lookback",
		ClaimTTL:     DefaultClaimTTL,
		StateTTL:     8 * 24 * time.Hour,
		MaxCallBytes: 32 << 20,
	}
}

func (c RedisStoreConfig) withDefaults() RedisStoreConfig {
	d := DefaultRedisStoreConfig()
	if c.KeyPrefix == "" {
		c.KeyPrefix = d.KeyPrefix
	}
	if c.ClaimTTL == 0 {
		c.ClaimTTL = d.ClaimTTL
	}
	if c.MaxCallBytes == 0 {
		c.MaxCallBytes = d.MaxCallBytes
	}
	return c
}

// Validate reports the first invalid field. Empty KeyPrefix, zero
// ClaimTTL and zero MaxCallBytes take their defaults.
func (c RedisStoreConfig) Validate() error {
	c = c.withDefaults()
	if strings.ContainsAny(c.KeyPrefix, "{}") {
		return fmt.Errorf("redis key prefix %q: must not contain '{' or '}'", c.KeyPrefix)
	}
	if c.ClaimTTL < time.Millisecond {
		return fmt.Errorf("redis claim TTL %v: want at least 1ms", c.ClaimTTL)
	}
	if c.StateTTL < 0 || (c.StateTTL > 0 && c.StateTTL < time.Millisecond) {
		return fmt.Errorf("redis state TTL %v: want 0 (never) or at least 1ms", c.StateTTL)
	}
	if c.MaxCallBytes < 1 {
		return fmt.Errorf("redis max call bytes %d: want positive", c.MaxCallBytes)
	}
	return nil
}

// RedisStore is a CheckpointStore on Redis (standalone, Sentinel or
// Cluster).
//
// Keys of partition 7, with the default prefix:
//
//	lookback:{p7}:claim     hash: node, generation, renewed_ms
//	lookback:{p7}:offsets   hash: topic -> next offset
//	lookback:{p7}:u:<user>  string: the user's encoded state
//
// The {p7} hash tag puts one partition's keys in one Redis Cluster slot, so
// that a script can touch all of them. Claim and Commit are Lua scripts,
// each a compare-and-set on the claim that Redis runs atomically; the claim
// clock is Redis's TIME, so nodes' clocks do not matter. The scripts start
// with a "#!lua" shebang (Redis 7 or later): Redis then refuses a writing
// script at its start when out of memory instead of failing it after some
// writes, which keeps a Commit all or nothing.
//
// Redis must not evict these keys: run it with maxmemory-policy noeviction
// (volatile-* policies would evict user states, which carry a TTL).
type RedisStore struct {
	client redis.UniversalClient
	cfg    RedisStoreConfig
	claim  *redis.Script
	commit *redis.Script
}

// NewRedisStore returns a store on client, which it does not close.
func NewRedisStore(client redis.UniversalClient, cfg RedisStoreConfig) (*RedisStore, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &RedisStore{
		client: client,
		cfg:    cfg.withDefaults(),
		claim:  redis.NewScript(claimScript),
		commit: redis.NewScript(commitScript),
	}, nil
}

// Close does nothing: the client belongs to the caller.
func (s *RedisStore) Close() error { return nil }

func (s *RedisStore) partitionKey(p int32, suffix string) string {
	return s.cfg.KeyPrefix + ":{p" + strconv.FormatInt(int64(p), 10) + "}:" + suffix
}

func (s *RedisStore) userKey(p int32, user string) string {
	return s.partitionKey(p, "u:"+user)
}

// cmpGeneration is a Lua function comparing two canonical decimal int64
// strings exactly (Lua numbers are doubles).
const cmpGeneration = `
local function cmpint(a, b)
  if a == b then return 0 end
  local na, nb = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
  if na ~= nb then return na and -1 or 1 end
  local r
  if #a ~= #b then r = (#a < #b) and -1 or 1 else r = (a < b) and -1 or 1 end
  if na then r = -r end
  return r
end
`

// claimScript: KEYS claim, offsets; ARGV node, generation, ttl_ms.
// Returns {1, offsets as a flat list} or {0, holder node, holder generation}.
const claimScript = `#!lua
` + cmpGeneration + `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local c = redis.call('HMGET', KEYS[1], 'node', 'generation', 'renewed_ms')
if c[1] then
  local same = c[1] == ARGV[1] and c[2] == ARGV[2]
  local higher = cmpint(ARGV[2], c[2]) > 0
  local stale = now - tonumber(c[3]) > tonumber(ARGV[3])
  if not (same or higher or stale) then
    return {0, c[1], c[2]}
  end
end
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'generation', ARGV[2], 'renewed_ms', string.format('%.0f', now))
return {1, redis.call('HGETALL', KEYS[2])}
`

// commitScript: KEYS claim, offsets, then one key per state.
// ARGV node, generation, final ("1": write offsets and renew the claim),
// state ttl_ms ("0": none), ops (one byte per state key: 's' set, 'd'
// delete), number of offsets n, n topic/offset pairs, then the values of
// the 's' states in order. Returns {1} or {0, holder node, holder
// generation}. Everything is checked before the first write.
const commitScript = `#!lua
local c = redis.call('HMGET', KEYS[1], 'node', 'generation')
if c[1] ~= ARGV[1] or c[2] ~= ARGV[2] then
  return {0, c[1] or '', c[2] or ''}
end
local ttl = tonumber(ARGV[4])
local ops = ARGV[5]
local noff = tonumber(ARGV[6])
local v = 7 + 2 * noff
for i = 1, #ops do
  local k = KEYS[2 + i]
  if string.byte(ops, i) == 115 then
    if ttl > 0 then
      redis.call('SET', k, ARGV[v], 'PX', ttl)
    else
      redis.call('SET', k, ARGV[v])
    end
    v = v + 1
  else
    redis.call('DEL', k)
  end
end
if ARGV[3] == '1' then
  for i = 0, noff - 1 do
    redis.call('HSET', KEYS[2], ARGV[7 + 2 * i], ARGV[8 + 2 * i])
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'renewed_ms', string.format('%.0f', now))
end
return {1}
`

func checkOwner(o Owner) error {
	if o.Node == "" {
		return errors.New("owner has an empty node")
	}
	return nil
}

// fenced builds the ErrFenced of a refused script, naming the holder.
func fenced(p int32, res []any) error {
	node, gen := "", ""
	if len(res) >= 3 {
		node, _ = res[1].(string)
		gen, _ = res[2].(string)
	}
	if node == "" {
		return fmt.Errorf("partition %d (no claim): %w", p, ErrFenced)
	}
	return fmt.Errorf("partition %d held by %s generation %s: %w", p, node, gen, ErrFenced)
}

// Claim implements CheckpointStore.
func (s *RedisStore) Claim(ctx context.Context, partition int32, owner Owner) (map[string]int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("claiming partition %d: %w", partition, err)
	}
	if err := checkOwner(owner); err != nil {
		return nil, fmt.Errorf("claiming partition %d: %w", partition, err)
	}
	keys := []string{s.partitionKey(partition, "claim"), s.partitionKey(partition, "offsets")}
	res, err := s.claim.Run(ctx, s.client, keys, owner.Node, strconv.FormatInt(owner.Generation, 10),
		s.cfg.ClaimTTL.Milliseconds()).Slice()
	if err != nil {
		return nil, fmt.Errorf("claiming partition %d: %w", partition, err)
	}
	if ok, _ := res[0].(int64); ok != 1 {
		return nil, fenced(partition, res)
	}
	flat, _ := res[1].([]any)
	offsets := make(map[string]int64, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		topic, _ := flat[i].(string)
		v, _ := flat[i+1].(string)
		off, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("claiming partition %d: reading offset of %q: %w", partition, topic, err)
		}
		offsets[topic] = off
	}
	return offsets, nil
}

// LoadStates implements CheckpointStore with one MGET (one slot: the
// partition's hash tag).
func (s *RedisStore) LoadStates(ctx context.Context, partition int32, users []string) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("loading states of partition %d: %w", partition, err)
	}
	out := make([][]byte, len(users))
	if len(users) == 0 {
		return out, nil
	}
	keys := make([]string, len(users))
	for i, u := range users {
		keys[i] = s.userKey(partition, u)
	}
	vals, err := s.client.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("loading states of partition %d: %w", partition, err)
	}
	for i, v := range vals {
		if str, ok := v.(string); ok {
			out[i] = []byte(str)
		}
	}
	return out, nil
}

// scriptCall is one EVALSHA of the commit script.
type scriptCall struct {
	cp   int // index in Commit's cps
	keys []string
	args []any
}

// Commit implements CheckpointStore. All partitions' script calls go in
// one pipeline: one round trip.
//
// A partition whose states exceed MaxCallBytes is split into several
// calls, each one a compare-and-set on the claim: all but the last write
// states only, the last writes its states, the offsets and renews the
// claim. The non-final calls of every partition go first, in one pipeline;
// a partition's last call is sent, in a second pipeline, only when all its
// earlier calls succeeded. So offsets never get ahead of the states they
// cover. A crash (or a lost claim) between the calls leaves some states
// ahead of the stored offsets, which is harmless: the next owner replays
// from the stored offsets onto those states, and the replayed events are
// deduplicated against the states that already hold them (facts, written
// before the checkpoint, are idempotent too). Such a commit returns an
// error (ErrFenced or the failure), as the caller must drop or retry it.
// The split exists so that no single script blocks Redis for long or
// builds a request of hundreds of megabytes.
func (s *RedisStore) Commit(ctx context.Context, cps []PartitionCheckpoint) []error {
	errs := make([]error, len(cps))
	if err := ctx.Err(); err != nil {
		for i := range errs {
			errs[i] = fmt.Errorf("committing partition %d: %w", cps[i].Partition, err)
		}
		return errs
	}
	var early, final []scriptCall
	for i := range cps {
		if err := checkOwner(cps[i].Owner); err != nil {
			errs[i] = fmt.Errorf("committing partition %d: %w", cps[i].Partition, err)
			continue
		}
		calls := s.commitCalls(i, &cps[i])
		early = append(early, calls[:len(calls)-1]...)
		final = append(final, calls[len(calls)-1])
	}
	if len(early) > 0 {
		s.runCommits(ctx, cps, early, errs)
		// Send a last call only if every earlier call of its partition
		// succeeded (runCommits set errs[cp] otherwise).
		kept := final[:0]
		for _, c := range final {
			if errs[c.cp] == nil {
				kept = append(kept, c)
			}
		}
		final = kept
	}
	s.runCommits(ctx, cps, final, errs)
	return errs
}

// commitCalls builds one partition's script calls (usually one).
func (s *RedisStore) commitCalls(i int, cp *PartitionCheckpoint) []scriptCall {
	claimKey := s.partitionKey(cp.Partition, "claim")
	offsetsKey := s.partitionKey(cp.Partition, "offsets")
	gen := strconv.FormatInt(cp.Owner.Generation, 10)
	ttl := strconv.FormatInt(s.cfg.StateTTL.Milliseconds(), 10)

	var calls []scriptCall
	start := 0
	for {
		// Take states up to MaxCallBytes (at least one).
		end, size := start, 0
		for end < len(cp.States) {
			st := &cp.States[end]
			n := len(st.UserID) + len(st.State) + len(s.cfg.KeyPrefix) + 16
			if end > start && size+n > s.cfg.MaxCallBytes {
				break
			}
			size += n
			end++
		}
		last := end >= len(cp.States)
		states := cp.States[start:end]
		keys := make([]string, 0, 2+len(states))
		keys = append(keys, claimKey, offsetsKey)
		ops := make([]byte, len(states))
		for j := range states {
			keys = append(keys, s.userKey(cp.Partition, states[j].UserID))
			if states[j].State == nil {
				ops[j] = 'd'
			} else {
				ops[j] = 's'
			}
		}
		finalFlag := "0"
		noff := 0
		if last {
			finalFlag, noff = "1", len(cp.Offsets)
		}
		args := make([]any, 0, 6+2*noff+len(states))
		args = append(args, cp.Owner.Node, gen, finalFlag, ttl, string(ops), noff)
		if last {
			for topic, off := range cp.Offsets {
				args = append(args, topic, off)
			}
		}
		for j := range states {
			if states[j].State != nil {
				args = append(args, states[j].State)
			}
		}
		calls = append(calls, scriptCall{cp: i, keys: keys, args: args})
		if last {
			return calls
		}
		start = end
	}
}

// runCommits runs calls in one pipeline of EVALSHA; the calls refused
// with NOSCRIPT (nothing ran: a restarted or flushed Redis) are run again
// after loading the script. It records the first error of each
// checkpoint in errs.
func (s *RedisStore) runCommits(ctx context.Context, cps []PartitionCheckpoint, calls []scriptCall, errs []error) {
	if len(calls) == 0 {
		return
	}
	results := make([]*redis.Cmd, len(calls))
	pipe := s.client.Pipeline()
	for i, c := range calls {
		results[i] = s.commit.EvalSha(ctx, pipe, c.keys, c.args...)
	}
	_, _ = pipe.Exec(ctx) // errors are read per command below

	var retry []int
	for i, r := range results {
		if redis.HasErrorPrefix(r.Err(), "NOSCRIPT") {
			retry = append(retry, i)
		}
	}
	if len(retry) > 0 {
		if err := s.commit.Load(ctx, s.client).Err(); err != nil {
			for _, i := range retry {
				setErr(errs, calls[i].cp, fmt.Errorf("committing partition %d: loading the commit script: %w",
					cps[calls[i].cp].Partition, err))
			}
			retry = nil
		}
		if len(retry) > 0 {
			pipe := s.client.Pipeline()
			for _, i := range retry {
				results[i] = s.commit.EvalSha(ctx, pipe, calls[i].keys, calls[i].args...)
			}
			_, _ = pipe.Exec(ctx)
		}
	}
	for i, r := range results {
		cp := calls[i].cp
		p := cps[cp].Partition
		res, err := r.Slice()
		if err != nil {
			setErr(errs, cp, fmt.Errorf("committing partition %d: %w", p, err))
			continue
		}
		if ok, _ := res[0].(int64); ok != 1 {
			setErr(errs, cp, fenced(p, res))
		}
	}
}

func setErr(errs []error, i int, err error) {
	if errs[i] == nil {
		errs[i] = err
	}
}
