#!/usr/bin/env python3
"""A folder synced between two devices on loopback: hyperfs multi-writer members (each with its
mount) beside two Syncthing instances (its file watcher at its shortest delay, 1 s; 10 s by
default). Prints one JSON object.

Usage: bench-sync.py HYPERFS_BIN WORK_DIR [SAVES] [OFFLINE_FILES]
  hyperfsSaveMs / syncthingSaveMs     median time from a save (a new 4 KiB file written and
                                      closed on one side) to its bytes on the other, over SAVES
  hyperfsOfflineSeconds / syncthing…  one side stopped, OFFLINE_FILES files of 4 KiB in 100
                                      folders written on the other, then the stopped side started:
                                      the time from its start to every file there
"""
import json, os, socket, statistics, subprocess, sys, time, urllib.request

HB, WORK = sys.argv[1], sys.argv[2]
SAVES = int(sys.argv[3]) if len(sys.argv) > 3 else 20
OFFLINE = int(sys.argv[4]) if len(sys.argv) > 4 else 10000
LOOPBACK = ["--listen", "127.0.0.1:0", "--no-lan", "--no-dht", "--no-hyperdht"]


def hyperfs(node, *args):
    out = subprocess.run([HB, "--data-dir", node, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"hyperfs {args}: {out.stderr}")
    return out.stdout


def wait_for(path, data, limit=120.0):
    started = time.time()
    while True:
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return
        except OSError:
            pass
        if time.time() - started > limit:
            sys.exit(f"{path} did not arrive in {limit} s")
        time.sleep(0.001)


def saves(src, dst):
    took = []
    for i in range(SAVES):
        data = os.urandom(4096)
        name = f"save-{i}.bin"
        t = time.time()
        with open(os.path.join(src, name), "wb") as f:
            f.write(data)
        wait_for(os.path.join(dst, name), data)
        took.append((time.time() - t) * 1000)
        time.sleep(0.2)
    return statistics.median(took)


def write_offline(folder):
    for d in range(100):
        os.makedirs(os.path.join(folder, f"off/d{d}"), exist_ok=True)
    for i in range(OFFLINE):
        with open(os.path.join(folder, f"off/d{i % 100}/f{i}.bin"), "wb") as f:
            f.write(i.to_bytes(8, "little") * 512)


def count_offline(folder):
    n = 0
    for d in range(100):
        try:
            n += len(os.listdir(os.path.join(folder, f"off/d{d}")))
        except OSError:
            pass
    return n


def wait_count(folder, limit=600.0):
    started = time.time()
    while count_offline(folder) < OFFLINE:
        if time.time() - started > limit:
            sys.exit(f"{folder}: {count_offline(folder)} of {OFFLINE} files after {limit} s")
        time.sleep(0.05)
    return time.time() - started


def run_hyperfs():
    a, b = os.path.join(WORK, "h-a"), os.path.join(WORK, "h-b")
    ma, mb = os.path.join(WORK, "h-mnt-a"), os.path.join(WORK, "h-mnt-b")
    os.makedirs(ma), os.makedirs(mb)
    try:
        for n in (a, b):
            hyperfs(n, "peers", *LOOPBACK)
        hyperfs(a, "create", "--multiwriter", "--name", "sync")
        addr = json.loads(hyperfs(a, "share", "sync", "--json"))["address"]
        invite = hyperfs(a, "invite", "sync").strip()
        joined = json.loads(hyperfs(b, "join", invite, "--name", "sync", "--peer", addr, "--json"))
        assert joined["member"], joined
        hyperfs(a, "mount", "sync", ma)
        hyperfs(b, "mount", "sync", mb)
        save = saves(ma, mb)
        # Offline: A's node stops; B writes; A starts again (its mount) and merges.
        hyperfs(a, "stop")
        write_offline(mb)
        hyperfs(b, "sync")
        t = time.time()
        hyperfs(a, "mount", "sync", ma)
        wait_count(ma)
        return save, time.time() - t
    finally:
        for n in (a, b):
            subprocess.run([HB, "--data-dir", n, "stop"], capture_output=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def syncthing_config(home, devices, folder, port, gui):
    device_xml = "".join(
        f'<device id="{d}" name="{n}" compression="metadata"><address>tcp://127.0.0.1:{p}</address></device>'
        for n, d, p in devices
    )
    members = "".join(f'<device id="{d}"></device>' for _, d, _ in devices)
    xml = f"""<configuration version="36">
<folder id="bench" label="bench" path="{folder}" type="sendreceive" rescanIntervalS="3600" fsWatcherEnabled="true" fsWatcherDelayS="1" ignorePerms="false" autoNormalize="true">{members}<minDiskFree unit="%">0</minDiskFree></folder>
{device_xml}
<gui enabled="true" tls="false"><address>127.0.0.1:{gui}</address><apikey>bench</apikey></gui>
<options><listenAddress>tcp://127.0.0.1:{port}</listenAddress><globalAnnounceEnabled>false</globalAnnounceEnabled>
<localAnnounceEnabled>false</localAnnounceEnabled><relaysEnabled>false</relaysEnabled><natEnabled>false</natEnabled>
<urAccepted>-1</urAccepted><crashReportingEnabled>false</crashReportingEnabled><autoUpgradeIntervalH>0</autoUpgradeIntervalH>
<minHomeDiskFree unit="%">0</minHomeDiskFree><startBrowser>false</startBrowser></options>
</configuration>"""
    with open(os.path.join(home, "config.xml"), "w") as f:
        f.write(xml)


def syncthing_start(home):
    log = open(os.path.join(home, "log.txt"), "a")
    env = dict(os.environ, STNODEFAULTFOLDER="1", STNOUPGRADE="1")
    return subprocess.Popen(
        ["syncthing", "serve", "--home", home, "--no-browser", "--no-restart"], stdout=log, stderr=log, env=env
    )


def syncthing_connected(gui):
    req = urllib.request.Request(f"http://127.0.0.1:{gui}/rest/system/connections", headers={"X-API-Key": "bench"})
    try:
        with urllib.request.urlopen(req, timeout=1) as r:
            conns = json.load(r)["connections"]
        return any(c["connected"] for c in conns.values())
    except OSError:
        return False


def run_syncthing():
    homes = [os.path.join(WORK, f"st-{n}") for n in "ab"]
    folders = [os.path.join(WORK, f"st-folder-{n}") for n in "ab"]
    ids, procs = [], {}
    for h, f in zip(homes, folders):
        subprocess.run(["syncthing", "generate", "--home", h, "--no-default-folder"], capture_output=True, check=True)
        out = subprocess.run(["syncthing", "serve", "--home", h, "--device-id"], capture_output=True, text=True)
        ids.append(out.stdout.strip())
        os.makedirs(os.path.join(f, ".stfolder"))
    ports, guis = [free_port(), free_port()], [free_port(), free_port()]
    devices = [("a", ids[0], ports[0]), ("b", ids[1], ports[1])]
    for i in range(2):
        syncthing_config(homes[i], devices, folders[i], ports[i], guis[i])
    try:
        for i in range(2):
            procs[i] = syncthing_start(homes[i])
        started = time.time()
        while not (syncthing_connected(guis[0]) and syncthing_connected(guis[1])):
            if time.time() - started > 60:
                sys.exit("the Syncthing instances did not connect")
            time.sleep(0.1)
        save = saves(folders[0], folders[1])
        procs[0].terminate()
        procs[0].wait()
        write_offline(folders[1])
        os.sync()
        t = time.time()
        procs[0] = syncthing_start(homes[0])
        wait_count(folders[0])
        offline = time.time() - t
        return save, offline
    finally:
        for p in procs.values():
            p.terminate()
            p.wait()


def main():
    h_save, h_off = run_hyperfs()
    s_save, s_off = run_syncthing()
    print(json.dumps({
        "hyperfsSaveMs": h_save, "syncthingSaveMs": s_save,
        "hyperfsOfflineSeconds": h_off, "syncthingOfflineSeconds": s_off,
        "offlineFiles": OFFLINE,
    }))


main()
