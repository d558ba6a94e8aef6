package config

import (
	"errors"
	"os"
	"slices"
	"testing"
)

// Unlike other variables, an empty DUSK_GOSSIP_CLIENT_TOPICS is a value:
// no client topic (unset means the default).
func TestGossipClientTopics(t *testing.T) {
	for _, c := range []struct {
		value string
		set   bool
		want  []string
	}{
		{set: false, want: []string{"dusk/directory", "dusk/sync"}},
		{value: "", set: true, want: nil},
		{value: "  ", set: true, want: nil},
		{value: "off", set: true, want: nil},
		{value: " OFF ", set: true, want: nil},
		{value: "dusk/sync", set: true, want: []string{"dusk/sync"}},
		{value: "dusk/sync, dusk/sync,,a/b", set: true, want: []string{"dusk/sync", "a/b"}},
	} {
		clearEnv(t) // sets every variable to "", which here means none
		if c.set {
			t.Setenv("DUSK_GOSSIP_CLIENT_TOPICS", c.value)
		} else {
			_ = os.Unsetenv("DUSK_GOSSIP_CLIENT_TOPICS")
		}
		cfg, err := Load()
		if err != nil {
			t.Fatalf("%q: %v", c.value, err)
		}
		if !slices.Equal([]string(cfg.GossipClientTopics), c.want) {
			t.Errorf("%q (set %v): topics %q, want %q", c.value, c.set, cfg.GossipClientTopics, c.want)
		}
		if cfg.GossipClientBPS != 262144 {
			t.Errorf("GossipClientBPS = %d, want 262144", cfg.GossipClientBPS)
		}
	}
}

func TestGossipConfigErrorsNameVariable(t *testing.T) {
	long := make([]byte, maxTopicLen+1)
	for i := range long {
		long[i] = 'a'
	}
	for name, value := range map[string]string{
		"DUSK_GOSSIP_CLIENT_TOPICS":        "dusk/relay/federation",
		"DUSK_GOSSIP_CLIENT_BYTES_PER_SEC": "1000",
	} {
		clearEnv(t)
		t.Setenv(name, value)
		_, err := Load()
		var ce *Error
		if !errors.As(err, &ce) || ce.Var != name || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s=%q: error %v does not name it", name, value, err)
		}
	}
	for _, value := range []string{"dusk sync", "dusk/\x01", string(long), "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q"} {
		clearEnv(t)
		t.Setenv("DUSK_GOSSIP_CLIENT_TOPICS", value)
		_, err := Load()
		var ce *Error
		if !errors.As(err, &ce) || ce.Var != "DUSK_GOSSIP_CLIENT_TOPICS" {
			t.Errorf("%q: error %v does not name DUSK_GOSSIP_CLIENT_TOPICS", value, err)
		}
	}
}
