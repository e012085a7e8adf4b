module varmor.org/bench/echowebhook

go 1.22
