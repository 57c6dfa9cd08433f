#!/bin/bash
# redis GET (redis-benchmark, 50 clients) through switchyard over TCP and Unix
# sockets, beside redis direct over both: three rounds. Run from the repository
# with a release build: `benches/unix.sh`.
set -e
D=$(mktemp -d)
redis-server --port 16379 --bind 127.0.0.1 --unixsocket $D/redis.sock --unixsocketperm 700 --save "" --appendonly no --daemonize no > $D/redis.log 2>&1 &
RP=$!
cat > $D/sy.toml <<TOML
[[listeners]]
name = "tcp"
bind = "127.0.0.1:16380"
pool = "tcp"
access_log = false
[[listeners]]
name = "unix"
bind = "unix:$D/front.sock"
pool = "tcp"
access_log = false
[[listeners]]
name = "tounix"
bind = "127.0.0.1:16381"
pool = "unix"
access_log = false
[pools.tcp]
backends = [{ addr = "127.0.0.1:16379" }]
[pools.unix]
backends = [{ addr = "unix:$D/redis.sock" }]
TOML
target/release/switchyard run --config $D/sy.toml > $D/sy.log 2>&1 &
SP=$!
sleep 1
n=300000
for r in 1 2 3; do
  for what in direct-tcp direct-unix sy-tcp sy-unix sy-tounix; do
    case $what in
      direct-tcp) a="-p 16379";;
      direct-unix) a="-s $D/redis.sock";;
      sy-tcp) a="-p 16380";;
      sy-unix) a="-s $D/front.sock";;
      sy-tounix) a="-p 16381";;
    esac
    v=$(redis-benchmark $a -t get -n $n -c 50 --csv 2>/dev/null | grep GET | cut -d, -f2 | tr -d '"')
    echo "$r $what $v"
  done
done
kill $SP $RP; wait 2>/dev/null; rm -rf $D
