module varmor.org/bench/loadgen

go 1.22
