// A LeaderWorkerSet replica group of two pods, without a cluster: the pods of the overlay
// k8s/overlays/cpu-demo-2pod (its coordinator, the group's leader and its worker) run on this
// machine as Kubernetes would run them, each in its own network namespace (a veth on a bridge,
// an address of its own, names in its own /etc/hosts as the cluster DNS would give them), its
// own hostname and its own /dev/shm. Their command lines, init containers and environment are
// read from the kustomize build: the test runs the manifests, not a copy of them. The files the
// pods would mount (/models, the Secrets, the image's tokenizer) are directories of the test.
//
// It shows: the worker's `q3vl group` serves ssh; the leader's waits for it and starts the
// mesh's two ranks, one in each pod, through mpirun over ssh; the group registers with the
// coordinator and serves a chat request sent through it with the official openai client, the
// same answer as one rank gives; and a rank killed in the worker pod ends the group's job
// (LWS then recreates the group) rather than leaving it hung.
//
// Needs root (or passwordless sudo) for `ip netns`; scripts/setup.sh installs iproute2 and
// OpenSSH. Every address is one this test creates (10.213.N.0/24 on its own bridge), and
// everything it creates is removed at the end, also when it fails.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import YAML from "yaml";
import OpenAI from "openai";

const REPO = process.env.Q3VL_REPO ?? path.resolve(import.meta.dirname, "../..");
const Q3VL = process.env.Q3VL_BINARY;
const OVERLAY = path.join(REPO, "k8s/overlays/cpu-demo-2pod");
const PRIV = process.getuid() === 0 ? [] : ["sudo", "-n"];

const sfx = String(process.pid % 100000);
const subnet = `10.213.${20 + (process.pid % 200)}`;
const bridge = `q3br${sfx}`.slice(0, 15);
const NAMESPACE = "default";  // the Kubernetes namespace the names below pretend to be in

// The pods: as LWS names them (leader NAME-0, worker NAME-0-1, under the headless Service NAME).
const pods = {
  coordinator: { ns: `q3c${sfx}`, ip: `${subnet}.3`, hostname: "q3vl-coordinator-7d9f8b6c4-x2x7q" },
  leader: { ns: `q3l${sfx}`, ip: `${subnet}.1`, hostname: "q3vl-replica-0" },
  worker: { ns: `q3w${sfx}`, ip: `${subnet}.2`, hostname: "q3vl-replica-0-1" },
};
const hostsFile = [
  "127.0.0.1 localhost",
  // The coordinator's Service (its ClusterIP would route to this pod).
  `${pods.coordinator.ip} q3vl-coordinator q3vl-coordinator.${NAMESPACE} q3vl-coordinator.${NAMESPACE}.svc.cluster.local`,
  // LWS's headless Service q3vl-replica: one record per pod.
  `${pods.leader.ip} q3vl-replica-0.q3vl-replica.${NAMESPACE} q3vl-replica-0.q3vl-replica.${NAMESPACE}.svc.cluster.local`,
  `${pods.worker.ip} q3vl-replica-0-1.q3vl-replica.${NAMESPACE} q3vl-replica-0-1.q3vl-replica.${NAMESPACE}.svc.cluster.local`,
  "",
].join("\n");

const work = fs.mkdtempSync(path.join(os.tmpdir(), "q3vl-lws-"));
const processes = [];
let cleaned = false;

function sh(argv, opts = {}) {
  return execFileSync(argv[0], argv.slice(1), { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], ...opts });
}
const priv = (argv) => sh([...PRIV, ...argv]);

// Without the right to create network namespaces (not root, no passwordless sudo, or a
// container without CAP_NET_ADMIN) the simulation cannot run: say so and exit 77, which ctest
// reports as skipped (SKIP_RETURN_CODE), never as passed.
try {
  priv(["ip", "netns", "add", `q3probe${process.pid}`]);
  priv(["ip", "netns", "del", `q3probe${process.pid}`]);
} catch (e) {
  console.error(`lws_group_test: SKIPPED: cannot create a network namespace here (${String(e.stderr ?? e.message).trim()})`);
  fs.rmSync(work, { recursive: true, force: true });
  process.exit(77);
}

// Stops every process of the test, then removes the namespaces, the bridge and the files.
function cleanup() {
  if (cleaned) return;
  cleaned = true;
  killPods();
  removeNetwork();
}
function killPods() {
  for (const p of processes) { try { p.proc.kill("SIGKILL"); } catch {} }
  for (const { ns } of Object.values(pods)) {
    try {
      for (const pid of priv(["ip", "netns", "pids", ns]).split(/\s+/).filter(Boolean)) {
        try { priv(["kill", "-9", pid]); } catch {}
      }
    } catch {}
  }
}
function removeNetwork() {
  for (const { ns } of Object.values(pods)) {
    try { priv(["ip", "netns", "del", ns]); } catch {}
    try { priv(["rm", "-rf", `/etc/netns/${ns}`]); } catch {}
  }
  try { priv(["ip", "link", "del", bridge]); } catch {}
  fs.rmSync(work, { recursive: true, force: true });
}
after(async () => {
  // The clients' keep-alive connections end with the servers' FIN: kill, let the FINs cross
  // the bridge, then remove it (else node waits a minute on sockets whose peer vanished).
  killPods();
  await new Promise((r) => setTimeout(r, 300));
  cleanup();
});
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => { cleanup(); process.exit(1); });

// The network: a bridge (the node's pod network) and a namespace per pod on it.
function makeNetwork() {
  priv(["ip", "link", "add", bridge, "type", "bridge"]);
  priv(["ip", "addr", "add", `${subnet}.254/24`, "dev", bridge]);
  priv(["ip", "link", "set", bridge, "up"]);
  for (const [name, pod] of Object.entries(pods)) {
    const veth = `q3${name[0]}${sfx}`.slice(0, 15);
    priv(["ip", "netns", "add", pod.ns]);
    priv(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod.ns]);
    priv(["ip", "link", "set", veth, "master", bridge, "up"]);
    priv(["ip", "-n", pod.ns, "addr", "add", `${pod.ip}/24`, "dev", "eth0"]);
    priv(["ip", "-n", pod.ns, "link", "set", "eth0", "up"]);
    priv(["ip", "-n", pod.ns, "link", "set", "lo", "up"]);
    // `ip netns exec` bind-mounts /etc/netns/NS/* over /etc: this pod's DNS.
    const etc = path.join(work, `etc-${pod.ns}`);
    fs.mkdirSync(etc);
    fs.writeFileSync(path.join(etc, "hosts"), hostsFile);
    priv(["mkdir", "-p", `/etc/netns/${pod.ns}`]);
    priv(["cp", path.join(etc, "hosts"), `/etc/netns/${pod.ns}/hosts`]);
  }
}

// ---------------------------------------------------------------------------------------------
// The manifests

function buildOverlay() {
  const text = sh(["kubectl", "kustomize", OVERLAY]);
  return YAML.parseAllDocuments(text).map((d) => d.toJS()).filter(Boolean);
}

// A pod's paths, as its volumes would provide them, mapped to the test's directories.
function pathMapper(podDir, dirs) {
  const map = [
    ["/models", path.join(podDir, "models")],
    ["/etc/q3vl/api-keys", dirs.apiKeys],
    ["/etc/q3vl/ssh", dirs.ssh],
    ["/usr/share/q3vl/tokenizer/qwen3", path.join(REPO, "model/assets/qwen3")],
  ];
  return (arg, env) => {
    let out = arg.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v) => env[v] ?? m);
    for (const [from, to] of map) {
      if (out === from || out.startsWith(`${from}/`)) out = to + out.slice(from.length);
    }
    return out;
  };
}

// The container's env: literal values and the downward API fields a pod would get.
function containerEnv(container, pod) {
  const env = {};
  for (const e of container.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.fieldRef?.fieldPath === "status.podIP") env[e.name] = pod.ip;
    else throw new Error(`env ${e.name}: no value the test can give`);
  }
  return env;
}

// Runs `argv` in the pod (its network namespace, its hostname, its own /dev/shm).
function startInPod(pod, argv, env, ready, what) {
  const vars = { ...env, HOSTNAME: pod.hostname };
  const script = 'hostname "$0" && mount -t tmpfs -o size=1g tmpfs /dev/shm && exec "$@"';
  const full = [...PRIV, "env", ...Object.entries(vars).map(([k, v]) => `${k}=${v}`),
    "ip", "netns", "exec", pod.ns, "unshare", "--uts", "--", "sh", "-c", script, pod.hostname, ...argv];
  const proc = spawn(full[0], full.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
  const entry = { proc, what, log: "" };
  processes.push(entry);
  entry.exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve(code ?? signal)));
  const append = (d) => { entry.log += d; };
  proc.stdout.on("data", append);
  proc.stderr.on("data", append);
  entry.ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} not ready in 120 s:\n${entry.log}`)), 120000);
    const check = () => { if (ready.test(entry.log)) { clearTimeout(timer); resolve(); } };
    proc.stdout.on("data", check);
    proc.stderr.on("data", check);
    entry.exited.then((code) => { clearTimeout(timer); reject(new Error(`${what} exited (${code}):\n${entry.log}`)); });
  });
  entry.ready.catch(() => {});
  return entry;
}

// Runs a pod's init containers (make-model) to completion, with its paths.
function runInitContainers(template, mapPath, pod) {
  for (const c of template.spec.initContainers ?? []) {
    const env = containerEnv(c, pod);
    assert.equal(c.command, undefined, `${c.name}: the image's entrypoint (q3vl) is expected`);
    sh([Q3VL, ...(c.args ?? []).map((a) => mapPath(a, env))]);
  }
}

async function metric(url, name, label) {
  const text = await (await fetch(`${url}/metrics`)).text();
  for (const line of text.split("\n")) {
    if (line.startsWith(`${name}{`) && line.includes(label)) return Number(line.split(" ").at(-1));
  }
  return undefined;
}

// `promise`'s value, or "timeout" after `seconds`.
async function within(promise, seconds) {
  let timer;
  const timeout = new Promise((r) => { timer = setTimeout(() => r("timeout"), seconds * 1000); });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function until(what, fn, seconds) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await fn().catch(() => undefined);
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${seconds} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// The pids of processes in a namespace whose command line contains every string of `parts`.
function pidsIn(ns, parts) {
  const out = [];
  for (const pid of priv(["ip", "netns", "pids", ns]).split(/\s+/).filter(Boolean)) {
    try {
      const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      if (parts.every((p) => cmdline.includes(p))) out.push(pid);
    } catch {}
  }
  return out;
}

const psIn = (ns) => {
  const pids = priv(["ip", "netns", "pids", ns]).split(/\s+/).filter(Boolean);
  return pids.length ? sh(["ps", "-o", "pid,ppid,stat,wchan:20,args", "-p", pids.join(",")]) : "(none)";
};

const environOf = (pid) => Object.fromEntries(fs.readFileSync(`/proc/${pid}/environ`, "utf8").split("\0")
  .filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));

// ---------------------------------------------------------------------------------------------

const QUESTION = [{ role: "user", content: "Name three colours of the rainbow." }];

test("a LeaderWorkerSet group of two pods serves through the coordinator, one rank in each pod", { timeout: 280000 }, async (t) => {
  assert.ok(Q3VL, "Q3VL_BINARY is not set");
  try {
    priv(["ip", "netns", "list"]);
  } catch (e) {
    assert.fail(`ip netns needs root or passwordless sudo: ${e.message}`);
  }

  const objects = buildOverlay();
  const lws = objects.find((o) => o.kind === "LeaderWorkerSet");
  const deployment = objects.find((o) => o.kind === "Deployment" && o.metadata.name === "q3vl-coordinator");
  const lwt = lws.spec.leaderWorkerTemplate;
  assert.equal(lwt.size, 2, "the overlay's group size");
  const leaderContainer = lwt.leaderTemplate.spec.containers[0];
  const workerContainer = lwt.workerTemplate.spec.containers[0];
  assert.deepEqual(workerContainer.args, leaderContainer.args, "leader and worker run the same command line");

  // The Secrets: the API keys of the build, and the group's ssh key pair (made as the README says).
  const dirs = { apiKeys: path.join(work, "api-keys"), ssh: path.join(work, "ssh") };
  fs.mkdirSync(dirs.apiKeys);
  fs.mkdirSync(dirs.ssh);
  const keysSecret = objects.find((o) => o.kind === "Secret" && o.metadata.name.startsWith("q3vl-api-keys"));
  const keysText = Buffer.from(keysSecret.data["api-keys"], "base64").toString();
  fs.writeFileSync(path.join(dirs.apiKeys, "api-keys"), keysText, { mode: 0o440 });
  const apiKey = keysText.split("\n").map((l) => l.trim()).find((l) => l && !l.startsWith("#"));
  sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "q3vl-group", "-f", path.join(work, "group-key")]);
  fs.copyFileSync(path.join(work, "group-key"), path.join(dirs.ssh, "ssh-privatekey"));
  fs.copyFileSync(path.join(work, "group-key.pub"), path.join(dirs.ssh, "authorized_keys"));
  // As the kubelet mounts a Secret with defaultMode 0440 (the ssh client refuses such a key:
  // `q3vl group` copies it).
  for (const f of ["ssh-privatekey", "authorized_keys"]) fs.chmodSync(path.join(dirs.ssh, f), 0o440);

  makeNetwork();

  // The coordinator pod.
  const coordDir = path.join(work, "coordinator");
  const coordTemplate = deployment.spec.template;
  const coordContainer = coordTemplate.spec.containers[0];
  const coordPath = pathMapper(coordDir, dirs);
  runInitContainers(coordTemplate, coordPath, pods.coordinator);
  const coordEnv = containerEnv(coordContainer, pods.coordinator);
  const coordinator = startInPod(pods.coordinator, [Q3VL, ...coordContainer.args.map((a) => coordPath(a, coordEnv))],
    coordEnv, /replicas join at/, "coordinator");
  await coordinator.ready;
  const httpPort = coordContainer.ports.find((p) => p.name === "http").containerPort;
  const coordUrl = `http://${pods.coordinator.ip}:${httpPort}`;

  // The group: LWS sets these three variables in each of its pods.
  const lwsEnv = (index) => ({
    LWS_LEADER_ADDRESS: `q3vl-replica-0.q3vl-replica.${NAMESPACE}`,
    LWS_GROUP_SIZE: String(lwt.size),
    LWS_WORKER_INDEX: String(index),
  });
  const startGroupPod = (pod, template, container, index, ready, what) => {
    const podDir = path.join(work, pod.hostname);
    const mapPath = pathMapper(podDir, dirs);
    runInitContainers(template, mapPath, pod);
    const env = { ...containerEnv(container, pod), ...lwsEnv(index), PATH: process.env.PATH };
    const argv = [Q3VL, ...container.args.map((a) => mapPath(a, env)),
    ];
    // The group's own files go under the test's directory (in a pod: $TMPDIR, its own).
    argv.splice(2, 0, "--run-dir", path.join(podDir, "group"));
    return startInPod(pod, argv, env, ready, what);
  };
  // Worker first or leader first: the leader waits either way. Leader first shows the wait.
  const formStart = Date.now();
  const leader = startGroupPod(pods.leader, lwt.leaderTemplate, leaderContainer, 0, /serving \S+ on http:/, "leader");
  await new Promise((r) => setTimeout(r, 1500));
  const worker = startGroupPod(pods.worker, lwt.workerTemplate, workerContainer, 1, /Server listening on/, "worker");
  await worker.ready;
  await leader.ready;
  t.diagnostic(`group formed and serving ${Date.now() - formStart} ms after the leader pod started (worker 1.5 s later)`);
  assert.match(leader.log, /q3vl group: leader of 2 pods, 1 rank each; waiting for the workers' ssh servers/);
  assert.match(leader.log, new RegExp(`q3vl group: starting 2 ranks on ${pods.leader.ip}, ${pods.worker.ip}`));

  // One rank in each pod: rank 1 of the job runs in the worker's namespace, under its sshd.
  const servePids = (ns) => pidsIn(ns, ["serve", "--mesh", "tp=2"]).filter((pid) => environOf(pid).OMPI_COMM_WORLD_RANK);
  const [workerRank] = servePids(pods.worker.ns);
  const [leaderRank] = servePids(pods.leader.ns);
  assert.ok(workerRank, `no q3vl serve rank in the worker pod:\n${worker.log}`);
  assert.ok(leaderRank, "no q3vl serve rank in the leader pod");
  assert.equal(environOf(workerRank).OMPI_COMM_WORLD_RANK, "1");
  assert.equal(environOf(leaderRank).OMPI_COMM_WORLD_RANK, "0");
  assert.equal(environOf(workerRank).LWS_WORKER_INDEX, "0", "the worker's rank has the leader's environment (mpirun -x)");

  // The group joins the coordinator as the replica named after the leader pod.
  await until("the replica registers", async () => (await metric(coordUrl, "q3vl:coordinator_replicas", 'state="up"')) === 1, 60);

  const client = new OpenAI({ baseURL: `${coordUrl}/v1`, apiKey, maxRetries: 0, timeout: 60000 });
  const served = coordContainer.args[coordContainer.args.indexOf("--served-model-name") + 1];
  const completion = await client.chat.completions.create({
    model: served, messages: QUESTION, max_tokens: 12, temperature: 0,
  });
  assert.equal(completion.object, "chat.completion");
  assert.equal(completion.choices.length, 1);
  assert.ok(completion.choices[0].message.content.length > 0);
  assert.equal(completion.usage.completion_tokens, 12);
  assert.equal(await metric(coordUrl, "q3vl:coordinator_requests_routed_total", `replica="${pods.leader.hostname}"`), 1);

  // The same answer from one rank of the same weights (the leader pod's model), no mesh.
  const single = spawn(Q3VL, ["serve", "--model", path.join(work, pods.leader.hostname, "models/demo"),
    "--host", "127.0.0.1", "--port", "0", "--served-model-name", served], { stdio: ["ignore", "ignore", "pipe"] });
  processes.push({ proc: single });
  let singleLog = "";
  const singleUrl = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`single rank not up:\n${singleLog}`)), 60000);
    single.stderr.on("data", (d) => {
      singleLog += d;
      const m = /serving \S+ on (http:\/\/[\d.]+:\d+)/.exec(singleLog);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
  });
  const one = await new OpenAI({ baseURL: `${singleUrl}/v1`, apiKey: "unused", maxRetries: 0 }).chat.completions.create({
    model: served, messages: QUESTION, max_tokens: 12, temperature: 0,
  });
  single.kill("SIGKILL");
  assert.equal(completion.choices[0].message.content, one.choices[0].message.content);

  // SIGTERM to the leader pod's process (the kubelet's, at a rolling update): `q3vl group`
  // passes it to the ranks on its pod; the replica drains (the request in flight finishes),
  // stops its ranks on both pods and the job ends cleanly.
  const leaderUrl = `http://${pods.leader.ip}:${leaderContainer.ports.find((p) => p.name === "http").containerPort}`;
  const inflight = client.chat.completions.create({
    model: served, messages: QUESTION, max_tokens: 300, ignore_eos: true, temperature: 0,
  });
  await until("the request runs on the group", async () => (await metric(leaderUrl, "q3vl:num_requests_running", "")) >= 1, 30);
  const termAt = Date.now();
  leader.proc.kill("SIGTERM");
  const drained = await inflight.catch((e) => assert.fail(`the request in flight failed (${e.message}):\n${leader.log}`));
  assert.equal(drained.usage.completion_tokens, 300);
  assert.equal(await within(leader.exited, 60), 0, `the group did not end cleanly after SIGTERM:\n${leader.log}`);
  t.diagnostic(`SIGTERM to exit 0: ${Date.now() - termAt} ms, the request in flight finished`);
  assert.match(leader.log, /q3vl group: SIGTERM: passed to the 1 rank on this pod/);
  assert.match(leader.log, /q3vl serve: stopped \(0 requests cut off/);
  await until("the worker's rank ends", async () => servePids(pods.worker.ns).length === 0, 30);
  assert.equal(await within(worker.exited, 0.1), "timeout", "the worker pod's ssh server keeps running");

  // The leader pod restarts (LWS would recreate the group; the worker here is still up): the
  // group forms again and rejoins the coordinator.
  await until("the coordinator drops the replica", async () =>
    (await metric(coordUrl, "q3vl:coordinator_replicas", 'state="up"')) === 0, 30);
  const again = startGroupPod(pods.leader, lwt.leaderTemplate, leaderContainer, 0, /serving \S+ on http:/, "leader (again)");
  await again.ready;
  await until("the replica rejoins", async () => (await metric(coordUrl, "q3vl:coordinator_replicas", 'state="up"')) === 1, 60);
  const second = await client.chat.completions.create({ model: served, messages: QUESTION, max_tokens: 12, temperature: 0 });
  assert.equal(second.choices[0].message.content, one.choices[0].message.content);

  // A rank lost in the worker pod ends the whole job within seconds: the leader's container
  // exits (LWS recreates the group), nothing waits forever.
  const [lostRank] = servePids(pods.worker.ns);
  assert.ok(lostRank, "no rank in the worker pod after the restart");
  const killAt = Date.now();
  priv(["kill", "-9", lostRank]);
  const code = await within(again.exited, 60);
  if (code === "timeout") {
    const left = Object.values(pods).map(({ ns }) => `${ns}:\n${psIn(ns)}`).join("\n");
    assert.fail(`the leader still runs 60 s after the worker's rank died:\n${again.log}\nprocesses:\n${left}`);
  }
  assert.notEqual(code, 0);
  t.diagnostic(`worker rank killed: the leader's container exited (${code}) after ${Date.now() - killAt} ms`);
  await until("the coordinator marks the replica down", async () =>
    (await metric(coordUrl, "q3vl:coordinator_replicas", 'state="up"')) === 0, 30);
});

test("a leader whose workers never come says which and gives up at --wait", { timeout: 60000 }, async () => {
  // No namespaces needed: the worker's name does not resolve on this machine.
  const dir = fs.mkdtempSync(path.join(work, "lonely-"));
  fs.writeFileSync(path.join(dir, "ssh-privatekey"), "not a key\n");
  const started = Date.now();
  const out = await new Promise((resolve) => {
    const p = spawn(Q3VL, ["group", "--ssh-dir", dir, "--wait", "2", "--run-dir", path.join(dir, "run"), "--",
      "serve", "--model", "/nonexistent", "--mesh", "tp=2"], {
      env: { ...process.env, LWS_LEADER_ADDRESS: "q3vl-replica-0.q3vl-replica.invalid", LWS_GROUP_SIZE: "2", LWS_WORKER_INDEX: "0" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let log = "";
    p.stderr.on("data", (d) => { log += d; });
    p.on("exit", (code) => resolve({ code, log }));
  });
  assert.equal(out.code, 1, out.log);
  assert.match(out.log, /after 2 s, \d of 2 pods are not reachable: .*q3vl-replica-0-1\.q3vl-replica\.invalid \(name not resolved/);
  assert.ok(Date.now() - started < 20000);
});
