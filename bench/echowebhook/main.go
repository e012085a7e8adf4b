// echowebhook: the least a mutating webhook can do (echo the uid, allow), in Go.
//
// The pod-create benchmark runs it next to the Python echo webhook to separate what any
// webhook call costs the API server from what the webhook's own stack costs. -http2=false
// serves HTTP/1.1 only, as aiohttp does. -patch answers every review with the same JSON
// patch: what applying a patch costs the API server, with no planning at all.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"io"
	"log"
	"net/http"
)

type review struct {
	Request struct {
		UID string `json:"uid"`
	} `json:"request"`
}

type response struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Response   struct {
		UID       string `json:"uid"`
		Allowed   bool   `json:"allowed"`
		PatchType string `json:"patchType,omitempty"`
		Patch     []byte `json:"patch,omitempty"`
	} `json:"response"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	cert := flag.String("cert", "", "serving certificate (PEM)")
	key := flag.String("key", "", "serving key (PEM)")
	http2 := flag.Bool("http2", true, "offer HTTP/2 (ALPN h2)")
	patch := flag.String("patch", "", "a fixed JSON patch to answer with (the least a mutating webhook does)")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/mutate", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		var in review
		if err == nil {
			err = json.Unmarshal(body, &in)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var out response
		out.APIVersion, out.Kind = "admission.k8s.io/v1", "AdmissionReview"
		out.Response.UID, out.Response.Allowed = in.Request.UID, true
		if *patch != "" {
			out.Response.PatchType, out.Response.Patch = "JSONPatch", []byte(*patch)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	srv := &http.Server{Addr: *addr, Handler: mux}
	if !*http2 {
		srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	log.Println("ready")
	log.Fatal(srv.ListenAndServeTLS(*cert, *key))
}
