package conduit

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"
)

// HealthStallAfterDefault is HealthConfig.StallAfter's default.
const HealthStallAfterDefault = time.Minute

// HealthConfig configures Store.Health and Store.HealthHandler. The zero
// value means defaults.
type HealthConfig struct {
	// StallAfter is how long a projector or the relay may go without
	// progress while work waits for it: it is unhealthy once the oldest
	// event (message) it has not passed is older than StallAfter and its
	// last progress is older too. Idle (nothing waiting) is healthy,
	// however long ago the last progress was. Defaults to
	// HealthStallAfterDefault (1 minute).
	StallAfter time.Duration
	// StallAfterFor overrides StallAfter for some workers: by projection
	// name, and "outbox" for the relay (a projection that batches for
	// minutes by design, say).
	StallAfterFor map[string]time.Duration
	// Projections names the projections to check; nil checks every
	// projection registered in the database.
	Projections []string
	// FlapAfter is how many lease changes (new epochs) within StallAfter
	// make a projection unhealthy even while it progresses now and then:
	// instances that keep taking the lease from each other (paused VMs,
	// renewals starved of connections). Defaults to 3.
	FlapAfter int
}

// HealthReport is the result of Store.Health.
type HealthReport struct {
	Healthy bool          `json:"healthy"`
	Checks  []HealthCheck `json:"checks"`
}

// HealthCheck is one worker's health: a projection's projector, or the
// outbox relay (Worker "relay", Name "outbox").
type HealthCheck struct {
	Worker  string `json:"worker"` // "projection" or "relay"
	Name    string `json:"name"`
	Healthy bool   `json:"healthy"`
	// Reason says why it is unhealthy ("" when healthy): stalled on an
	// event, the horizon held by a backend, no live owner, lease flapping,
	// or an owner making no progress.
	Reason string `json:"reason,omitempty"`
	// Pending counts the events (messages) waiting; OldestPending is the
	// age of the oldest of them.
	Pending       int64         `json:"pending"`
	OldestPending time.Duration `json:"oldest_pending_ns"`
	// LastProgress is when it last passed events (messages); zero: never.
	LastProgress time.Time `json:"last_progress,omitzero"`
	Owner        string    `json:"owner,omitempty"`
}

// healthState remembers the epochs seen, to tell lease flapping.
type healthState struct {
	mu     sync.Mutex
	epochs map[string][]epochSeen
}

type epochSeen struct {
	epoch int64
	at    time.Time
}

// flaps records epoch for name and returns how many new epochs were seen
// within window.
func (h *healthState) flaps(name string, epoch int64, window time.Duration) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.epochs == nil {
		h.epochs = map[string][]epochSeen{}
	}
	now := time.Now()
	seen := h.epochs[name]
	if len(seen) == 0 || seen[len(seen)-1].epoch != epoch {
		seen = append(seen, epochSeen{epoch, now})
	}
	seen = slices.DeleteFunc(seen, func(e epochSeen) bool { return now.Sub(e.at) > window })
	h.epochs[name] = seen
	if len(seen) < 2 {
		return 0
	}
	return int(seen[len(seen)-1].epoch - seen[0].epoch)
}

// Health checks the projectors and the outbox relay: a worker is unhealthy
// when work has waited for it longer than StallAfter and it has made no
// progress for as long (or its lease keeps changing hands), and the report
// says which and why. A worker with nothing to do is healthy. It reads
// conduit.projection_status() and conduit.outbox_status(); an error
// reading them is returned.
func (s *Store) Health(ctx context.Context, cfg *HealthConfig) (HealthReport, error) {
	var c HealthConfig
	if cfg != nil {
		c = *cfg
	}
	setDefault(&c.StallAfter, HealthStallAfterDefault)
	setDefault(&c.FlapAfter, 3)
	sts, err := s.ProjectionStatuses(ctx)
	if err != nil {
		return HealthReport{}, err
	}
	rep := HealthReport{Healthy: true}
	for _, st := range sts {
		if c.Projections != nil && !slices.Contains(c.Projections, st.Name) {
			continue
		}
		hc := s.projectionHealth(st, &c)
		rep.Healthy = rep.Healthy && hc.Healthy
		rep.Checks = append(rep.Checks, hc)
	}
	ob, err := s.OutboxStatus(ctx)
	if err != nil {
		return HealthReport{}, err
	}
	hc := relayHealth(ob, &c)
	rep.Healthy = rep.Healthy && hc.Healthy
	rep.Checks = append(rep.Checks, hc)
	return rep, nil
}

// stallAfter is name's threshold.
func (c *HealthConfig) stallAfter(name string) time.Duration {
	if d, ok := c.StallAfterFor[name]; ok && d > 0 {
		return d
	}
	return c.StallAfter
}

func (s *Store) projectionHealth(st ProjectionStatus, c *HealthConfig) HealthCheck {
	stallAfter := c.stallAfter(st.Name)
	hc := HealthCheck{Worker: "projection", Name: st.Name, Healthy: true, Pending: st.LagEvents,
		OldestPending: st.Lag, LastProgress: st.LastProgress, Owner: st.Owner}
	flaps := 0
	if st.Epoch > 0 {
		flaps = s.health.flaps(st.Name, st.Epoch, stallAfter)
	}
	waiting := st.LagEvents > 0 && st.Lag > stallAfter && time.Since(st.LastProgress) > stallAfter
	switch {
	case st.State == StateStalled:
		hc.Reason = fmt.Sprintf("stalled on event %s: %s", st.StalledEventID, st.StallReason)
	case flaps >= c.FlapAfter:
		hc.Reason = fmt.Sprintf("lease flapping: %d new epochs within %s (now %d, owner %q)", flaps, stallAfter, st.Epoch, st.Owner)
	case !waiting:
		return hc
	case st.State == StateStopped || st.Owner == "":
		hc.Reason = fmt.Sprintf("no live owner: no instance holds the lease (none running, or all paused or cut off); %d events wait, the oldest for %s",
			st.LagEvents, st.Lag.Round(time.Millisecond))
	case st.Horizon != nil:
		h := st.Horizon
		hc.Reason = fmt.Sprintf("horizon held by pid %d (application %q, transaction since %s): %d events wait behind it; query: %s",
			h.PID, h.Application, h.Since.Format(time.RFC3339), h.HeldEvents, h.Query)
	case st.FailedAttempts > 0:
		hc.Reason = fmt.Sprintf("failing on event %s (%d attempts): %s", st.FailingEventID, st.FailedAttempts, st.LastError)
	default:
		hc.Reason = fmt.Sprintf("owner %q holds the lease but has passed no event since %s; %d events wait",
			st.Owner, progressTime(st.LastProgress), st.LagEvents)
	}
	hc.Healthy = false
	return hc
}

func relayHealth(st OutboxStatus, c *HealthConfig) HealthCheck {
	hc := HealthCheck{Worker: "relay", Name: "outbox", Healthy: true, Pending: st.Pending,
		OldestPending: st.OldestPendingAge, LastProgress: st.LastDeliveryAt, Owner: st.Owner}
	stallAfter := c.stallAfter("outbox")
	if st.Pending == 0 || st.OldestPendingAge <= stallAfter || time.Since(st.LastDeliveryAt) <= stallAfter {
		return hc
	}
	switch {
	case st.Owner == "":
		hc.Reason = fmt.Sprintf("no live relay: no instance holds the lease; %d messages wait, the oldest for %s",
			st.Pending, st.OldestPendingAge.Round(time.Millisecond))
	case st.FailedAttempts > 0 || st.LastError != "":
		hc.Reason = fmt.Sprintf("failing on message %s (%d attempts): %s", st.FailingMessageID, st.FailedAttempts, st.LastError)
	default:
		hc.Reason = fmt.Sprintf("relay %q holds the lease but has delivered nothing since %s; %d messages wait (a transaction holding the horizon delays them too: see conduit.horizon_age())",
			st.Owner, progressTime(st.LastDeliveryAt), st.Pending)
	}
	hc.Healthy = false
	return hc
}

func progressTime(t time.Time) string {
	if t.IsZero() {
		return "ever"
	}
	return t.Format(time.RFC3339)
}

// HealthHandler returns an http.Handler for a health endpoint: 200 and the
// HealthReport as JSON when healthy, 503 with the report when not, 503
// with {"healthy":false,"error":…} when the database cannot be read. Each
// request runs Store.Health with cfg, bounded by the request's context
// and 10 seconds.
func (s *Store) HealthHandler(cfg *HealthConfig) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "application/json")
		rep, err := s.Health(ctx, cfg)
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]any{"healthy": false, "error": err.Error()})
			return
		}
		if !rep.Healthy {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(rep)
	})
}
