// The same module, built offline from Debian's packaged go-systemd
// (golang-github-coreos-go-systemd-dev, which pulls in godbus):
//   GOFLAGS=-modfile=go.debian.mod go build
module example.com/handover-recipe-go

go 1.19

require github.com/coreos/go-systemd/v22 v22.3.2

require github.com/godbus/dbus/v5 v5.0.4 // indirect

replace github.com/coreos/go-systemd/v22 => /usr/share/gocode/src/github.com/coreos/go-systemd

replace github.com/godbus/dbus/v5 => /usr/share/gocode/src/github.com/godbus/dbus
