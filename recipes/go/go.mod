module example.com/handover-recipe-go

go 1.19

require github.com/coreos/go-systemd/v22 v22.5.0
