// loadgen: AdmissionReview load over TLS keep-alive, in its own process (Go, like the
// API server), so the Python server under test gets a core to itself.
//
// Closed loop (-rate 0): -conns workers send back to back; open loop (-rate R): requests
// are scheduled at R/s and latency is measured from the scheduled time (no coordinated
// omission). Prints one JSON object.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"sync"
	"time"
)

type result struct {
	Requests int     `json:"requests"`
	Errors   int     `json:"errors"`
	Seconds  float64 `json:"seconds"`
	RPS      float64 `json:"rps"`
	P50      float64 `json:"p50_ms"`
	P90      float64 `json:"p90_ms"`
	P99      float64 `json:"p99_ms"`
	Max      float64 `json:"max_ms"`
	Warmup   int     `json:"warmup_requests"`
}

func main() {
	url := flag.String("url", "", "https://127.0.0.1:PORT/mutate")
	caFile := flag.String("ca", "", "CA bundle (PEM)")
	bodyFile := flag.String("body", "", "request body")
	conns := flag.Int("conns", 8, "keep-alive connections / workers")
	duration := flag.Duration("duration", 5*time.Second, "measured duration")
	warmup := flag.Duration("warmup", time.Second, "unmeasured warm-up")
	rate := flag.Float64("rate", 0, "requests/s (0: closed loop)")
	expect := flag.String("expect", `"allowed":true`, "substring every response must contain")
	flag.Parse()

	ca, err := os.ReadFile(*caFile)
	check(err)
	body, err := os.ReadFile(*bodyFile)
	check(err)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		check(fmt.Errorf("no certificates in %s", *caFile))
	}
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool},
		MaxIdleConnsPerHost: *conns,
		MaxConnsPerHost:     *conns,
		ForceAttemptHTTP2:   false,
	}
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	want := []byte(*expect)

	send := func() bool {
		resp, err := client.Post(*url, "application/json", bytes.NewReader(body))
		if err != nil {
			return false
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		return err == nil && resp.StatusCode == 200 && bytes.Contains(data, want)
	}

	run := func(d time.Duration, record bool) result {
		var mu sync.Mutex
		var lat []float64
		errors := 0
		start := time.Now()
		deadline := start.Add(d)
		var wg sync.WaitGroup
		if *rate <= 0 {
			for i := 0; i < *conns; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					local := make([]float64, 0, 4096)
					bad := 0
					for time.Now().Before(deadline) {
						t0 := time.Now()
						ok := send()
						local = append(local, float64(time.Since(t0).Microseconds())/1000)
						if !ok {
							bad++
						}
					}
					mu.Lock()
					lat = append(lat, local...)
					errors += bad
					mu.Unlock()
				}()
			}
		} else {
			jobs := make(chan time.Time, 100000)
			for i := 0; i < *conns; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					local := make([]float64, 0, 4096)
					bad := 0
					for scheduled := range jobs {
						ok := send()
						local = append(local, float64(time.Since(scheduled).Microseconds())/1000)
						if !ok {
							bad++
						}
					}
					mu.Lock()
					lat = append(lat, local...)
					errors += bad
					mu.Unlock()
				}()
			}
			interval := time.Duration(float64(time.Second) / *rate)
			for next := start; next.Before(deadline); next = next.Add(interval) {
				if wait := time.Until(next); wait > 0 {
					time.Sleep(wait)
				}
				jobs <- next
			}
			close(jobs)
		}
		wg.Wait()
		elapsed := time.Since(start).Seconds()
		sort.Float64s(lat)
		pct := func(p float64) float64 {
			if len(lat) == 0 {
				return 0
			}
			return lat[int(p*float64(len(lat)-1))]
		}
		r := result{Requests: len(lat), Errors: errors, Seconds: elapsed, RPS: float64(len(lat)) / elapsed}
		r.P50, r.P90, r.P99 = pct(0.50), pct(0.90), pct(0.99)
		if len(lat) > 0 {
			r.Max = lat[len(lat)-1]
		}
		return r
	}

	warm := run(*warmup, false)
	r := run(*duration, true)
	r.Warmup = warm.Requests
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
