// Offline checks of the Kubernetes manifests in k8s/ (no cluster needed): every overlay (and the
// base) builds with `kubectl kustomize`; every object it yields passes a strict schema check
// (unknown fields rejected, as kubeconform -strict does); the pieces agree with each other
// (probe ports, Service ports, the q3vl command lines, Secret and PVC names); each overlay keeps
// the properties it exists for; and yamllint passes on every YAML file. Negative cases prove the
// validators reject what they should.
//
//   node --test tests/k8s/validate_manifests.mjs        (from the repository root)
//
// Environment: Q3VL_REPO (the repository root; default: the current directory) and Q3VL_SHARED
// (default: ../shared beside the repository), which holds schemas/ with the LeaderWorkerSet CRD.
// Tools: kubectl 1.21 or newer (its `kubectl kustomize`): Q3VL_KUBECTL, else .tools/kubectl in the
// repository (scripts/setup.sh puts one there when PATH has none), else kubectl on PATH; yamllint
// on PATH; the npm packages of this folder (npm ci --prefix tests/k8s).
//
// Strictness: kubernetes-models checks types, enums, formats and required fields of the core
// kinds but lets unknown fields through. Its validators are compiled from the Kubernetes OpenAPI
// schemas and read exactly the fields their schema declares, so the object is handed to them
// behind a Proxy that records every field read; a field the validator never read is not in the
// schema. The LeaderWorkerSet is checked with ajv against the CRD's openAPIV3Schema, with
// additionalProperties: false added wherever the schema lists properties; its pod templates are
// checked once more as core PodTemplateSpecs. The PodMonitor has no schema here: its shape is
// checked by hand (assertPodMonitorShape) and is not a full schema check.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import YAML from "yaml";
import Ajv from "ajv";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { PersistentVolumeClaim } from "kubernetes-models/v1/PersistentVolumeClaim";
import { PodTemplateSpec } from "kubernetes-models/v1/PodTemplateSpec";
import { Secret } from "kubernetes-models/v1/Secret";
import { Service } from "kubernetes-models/v1/Service";

const REPO = path.resolve(process.env.Q3VL_REPO || process.cwd());
const SHARED = path.resolve(process.env.Q3VL_SHARED || path.join(REPO, "..", "shared"));
const K8S = path.join(REPO, "k8s");
if (!fs.existsSync(path.join(K8S, "base", "kustomization.yaml"))) {
  throw new Error(`${K8S}/base/kustomization.yaml not found: run from the repository root or set Q3VL_REPO`);
}
const LWS_CRD = path.join(SHARED, "schemas", "leaderworkerset.x-k8s.io_leaderworkersets.yaml");
const KUBECTL = process.env.Q3VL_KUBECTL ||
  (fs.existsSync(path.join(REPO, ".tools", "kubectl")) ? path.join(REPO, ".tools", "kubectl") : "kubectl");

const CPU_DEMO = "overlays/cpu-demo";
const BIG = "overlays/qwen3-vl-235b-8xh100";
const CPU_GROUP = "overlays/cpu-demo-2pod";
const BIG_GROUP = "overlays/qwen3-vl-235b-2x8xh100";
// The base and every folder under k8s/overlays (a new overlay is checked without a change here).
const BUILDS = ["base", ...fs.readdirSync(path.join(K8S, "overlays"), { withFileTypes: true })
  .filter((d) => d.isDirectory()).map((d) => `overlays/${d.name}`).sort()];

// ---------------------------------------------------------------------------------------------
// Building

function run(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.error) {
    throw new Error(`${cmd} could not run (${r.error.message}); scripts/setup.sh installs it`);
  }
  return r;
}

const built = new Map();
// The objects `kubectl kustomize k8s/<dir>` yields (parsed once, deep-copied for each caller).
function build(dir) {
  if (!built.has(dir)) {
    const r = run(KUBECTL, ["kustomize", path.join(K8S, dir)]);
    if (r.status !== 0) {
      const version = run(KUBECTL, ["version", "--client"]).stdout.trim().replace(/\n/g, "; ");
      throw new Error(`${KUBECTL} kustomize k8s/${dir} failed (${version}):\n${r.stderr}`);
    }
    const objects = [];
    // kubectl reads manifests as YAML 1.1; so do we.
    for (const doc of YAML.parseAllDocuments(r.stdout, { version: "1.1" })) {
      if (doc.errors.length) throw new Error(`k8s/${dir}: ${doc.errors.map(String).join("; ")}`);
      const obj = doc.toJS();
      if (obj !== null) objects.push(obj);
    }
    built.set(dir, objects);
  }
  return structuredClone(built.get(dir));
}

const id = (o) => `${o.kind}/${o.metadata?.name}`;
const find = (objects, kind, name) => objects.find((o) => o.kind === kind && o.metadata?.name === name);

// ---------------------------------------------------------------------------------------------
// Core kinds: kubernetes-models plus unknown-field detection

const CORE = {
  "apps/v1 Deployment": Deployment,
  "v1 ConfigMap": ConfigMap,
  "v1 PersistentVolumeClaim": PersistentVolumeClaim,
  "v1 Secret": Secret,
  "v1 Service": Service,
};

// Problems of `obj` as the model class `Model` sees it: the validator's own errors, then every
// field the validator never read (not in the schema), as JSON pointers.
function strictCore(Model, obj, where = "") {
  const read = new WeakMap();
  const proxies = new WeakMap();
  const note = (target, key) => {
    if (typeof key !== "string" || Array.isArray(target)) return;
    if (!read.has(target)) read.set(target, new Set());
    read.get(target).add(key);
  };
  const wrap = (value) => {
    if (value === null || typeof value !== "object") return value;
    if (!proxies.has(value)) {
      proxies.set(value, new Proxy(value, {
        get(target, key, receiver) {
          note(target, key);
          return wrap(Reflect.get(target, key, receiver));
        },
        has(target, key) {
          note(target, key);
          return Reflect.has(target, key);
        },
      }));
    }
    return proxies.get(value);
  };
  try {
    Model.prototype.validate.call(wrap(obj));
  } catch (e) {
    return [`${where}: ${e.message}`];
  }
  const problems = [];
  const walk = (value, pointer) => {
    if (Array.isArray(value)) {
      value.forEach((item, i) => walk(item, `${pointer}/${i}`));
    } else if (value !== null && typeof value === "object") {
      const known = read.get(value) ?? new Set();
      for (const key of Object.keys(value)) {
        if (known.has(key)) walk(value[key], `${pointer}/${key}`);
        else problems.push(`${where}${pointer}/${key}: unknown field`);
      }
    }
  };
  walk(obj, "");
  return problems;
}

// Object metadata of any kind, checked as a ConfigMap's.
function strictMetadata(obj) {
  return strictCore(ConfigMap, { apiVersion: "v1", kind: "ConfigMap", metadata: obj.metadata }, id(obj))
    .map((p) => p.replace(`${id(obj)}/metadata`, `${id(obj)} metadata`));
}

// ---------------------------------------------------------------------------------------------
// The LeaderWorkerSet: ajv over the CRD's openAPIV3Schema

// The CRD's structural schema as ajv takes it: x-kubernetes-* markers become JSON Schema
// (int-or-string: integer or string; list-type set: unique items; list-type map: unique map
// keys), and every object that lists its properties accepts no others, unless it says it keeps
// unknown fields.
function crdToAjv(schema, pointer = "#") {
  if (schema === null || typeof schema !== "object" || Array.isArray(schema)) return schema;
  const out = {};
  for (const [key, value] of Object.entries(schema)) {
    switch (key) {
      case "description":
        break;
      case "properties":
        out.properties = Object.fromEntries(
          Object.entries(value).map(([name, s]) => [name, crdToAjv(s, `${pointer}/properties/${name}`)]));
        break;
      case "items":
      case "not":
        out[key] = crdToAjv(value, `${pointer}/${key}`);
        break;
      case "additionalProperties":
        out[key] = typeof value === "object" ? crdToAjv(value, `${pointer}/${key}`) : value;
        break;
      case "allOf":
      case "anyOf":
      case "oneOf":
        out[key] = value.map((s, i) => crdToAjv(s, `${pointer}/${key}/${i}`));
        break;
      case "x-kubernetes-int-or-string":
        if (value && !schema.anyOf) out.anyOf = [{ type: "integer" }, { type: "string" }];
        break;
      case "x-kubernetes-list-type":
        if (value === "set") out.uniqueItems = true;
        break;
      case "x-kubernetes-list-map-keys":
        out["x-list-map-keys"] = value;
        break;
      case "x-kubernetes-map-type":
      case "x-kubernetes-preserve-unknown-fields":
        break;
      default:
        if (key.startsWith("x-kubernetes-")) {
          // e.g. x-kubernetes-validations (CEL rules): not evaluated here, so say so loudly.
          throw new Error(`${pointer}: ${key} is not handled by crdToAjv`);
        }
        out[key] = value;
    }
  }
  if (schema.properties && schema.additionalProperties === undefined &&
      !schema["x-kubernetes-preserve-unknown-fields"]) {
    out.additionalProperties = false;
  }
  return out;
}

let lwsValidator;
function validateLws(obj) {
  if (!lwsValidator) {
    if (!fs.existsSync(LWS_CRD)) throw new Error(`${LWS_CRD} not found (set Q3VL_SHARED)`);
    const crd = YAML.parse(fs.readFileSync(LWS_CRD, "utf8"));
    assert.equal(crd.kind, "CustomResourceDefinition");
    const versions = Object.fromEntries(crd.spec.versions.map((v) => [v.name, v]));
    const ajv = new Ajv({ allErrors: true, strict: true, strictTypes: false, unicodeRegExp: false });
    ajv.addFormat("int32", { type: "number", validate: (n) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31 });
    ajv.addFormat("int64", { type: "number", validate: (n) => Number.isSafeInteger(n) });
    ajv.addFormat("date-time", { type: "string", validate: (s) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/i.test(s) });
    ajv.addKeyword({
      keyword: "x-list-map-keys",
      type: "array",
      schemaType: "array",
      errors: false,
      validate: (keys, items) => {
        const ids = items.map((item) => JSON.stringify(keys.map((k) => item?.[k])));
        return new Set(ids).size === ids.length;
      },
    });
    const compiled = {};
    for (const [name, v] of Object.entries(versions)) {
      compiled[`${crd.spec.group}/${name}`] = ajv.compile(crdToAjv(v.schema.openAPIV3Schema));
    }
    lwsValidator = compiled;
  }
  const validate = lwsValidator[obj.apiVersion];
  if (!validate) return [`${id(obj)}: apiVersion ${obj.apiVersion} is not served by the CRD`];
  const problems = [];
  if (!validate(obj)) {
    for (const e of validate.errors) {
      const extra = e.params?.additionalProperty ? ` (${e.params.additionalProperty})` : "";
      problems.push(`${id(obj)}${e.instancePath}: ${e.message}${extra}`);
    }
  }
  // The CRD types metadata as a bare object: check it as Kubernetes metadata.
  problems.push(...strictMetadata(obj));
  // And each pod template once more as the core type.
  const lwt = obj.spec?.leaderWorkerTemplate ?? {};
  for (const which of ["leaderTemplate", "workerTemplate"]) {
    if (lwt[which]) {
      problems.push(...strictCore(PodTemplateSpec, lwt[which], `${id(obj)}/spec/leaderWorkerTemplate/${which}`));
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------
// The PodMonitor: its shape, by hand (no schema for monitoring.coreos.com here)

function podMonitorShape(obj) {
  const problems = [];
  const p = (msg) => problems.push(`${id(obj)}: ${msg}`);
  if (obj.apiVersion !== "monitoring.coreos.com/v1") p(`apiVersion ${obj.apiVersion}`);
  if (!obj.metadata?.name) p("no metadata.name");
  problems.push(...strictMetadata(obj));
  const spec = obj.spec;
  if (!spec || typeof spec !== "object") return [...problems, `${id(obj)}: no spec`];
  const sel = spec.selector;
  if (!sel || typeof sel !== "object" || (!sel.matchLabels && !sel.matchExpressions)) {
    p("spec.selector needs matchLabels or matchExpressions");
  } else {
    for (const key of Object.keys(sel)) if (!["matchLabels", "matchExpressions"].includes(key)) p(`spec.selector.${key}: unknown field`);
    for (const e of sel.matchExpressions ?? []) {
      if (typeof e.key !== "string" || !["In", "NotIn", "Exists", "DoesNotExist"].includes(e.operator)) {
        p(`spec.selector.matchExpressions: bad entry ${JSON.stringify(e)}`);
      }
    }
  }
  const endpoints = spec.podMetricsEndpoints;
  if (!Array.isArray(endpoints) || endpoints.length === 0) {
    p("spec.podMetricsEndpoints must be a non-empty list");
  } else {
    for (const [i, ep] of endpoints.entries()) {
      if (typeof ep.port !== "string" || ep.port === "") p(`podMetricsEndpoints[${i}].port must name a container port`);
      if (typeof ep.path !== "string" || !ep.path.startsWith("/")) p(`podMetricsEndpoints[${i}].path must be an absolute path`);
      if (ep.interval !== undefined && !/^(\d+(ms|s|m|h))+$/.test(ep.interval)) p(`podMetricsEndpoints[${i}].interval ${ep.interval}`);
    }
  }
  for (const key of Object.keys(spec)) {
    if (!["selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels"].includes(key)) {
      p(`spec.${key}: not a field this check knows`);
    }
  }
  return problems;
}

// Every object of a build, each against its kind's validator.
function validateObject(obj) {
  if (obj.kind === "Secret" && obj.data) {
    // kustomize folds long base64 values over several lines; the API server's base64 decoder
    // (Go's encoding/base64) skips line breaks, so the schema's "byte" format sees them without.
    obj = { ...obj, data: Object.fromEntries(Object.entries(obj.data).map(([k, v]) => [k, String(v).replace(/[\r\n]/g, "")])) };
  }
  const Model = CORE[`${obj.apiVersion} ${obj.kind}`];
  if (Model) return strictCore(Model, obj, id(obj));
  if (obj.kind === "LeaderWorkerSet") return validateLws(obj);
  if (obj.kind === "PodMonitor") return podMonitorShape(obj);
  return [`${id(obj)}: no validator for ${obj.apiVersion} ${obj.kind}; add one to validate_manifests.mjs`];
}

// ---------------------------------------------------------------------------------------------
// Cross-checks between the objects of one build

// The pod templates of a build, with where they come from.
function podTemplates(objects) {
  const out = [];
  for (const o of objects) {
    if (o.kind === "Deployment") out.push({ where: id(o), template: o.spec.template });
    if (o.kind === "LeaderWorkerSet") {
      const lwt = o.spec.leaderWorkerTemplate;
      out.push({ where: `${id(o)} leader`, template: lwt.leaderTemplate ?? lwt.workerTemplate, lws: o, role: "leader" });
      if (lwt.leaderTemplate) out.push({ where: `${id(o)} worker`, template: lwt.workerTemplate, lws: o, role: "worker" });
    }
  }
  return out;
}

function selects(selector, labels = {}) {
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of selector.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, e.key);
    if (e.operator === "In" && !(has && e.values.includes(labels[e.key]))) return false;
    if (e.operator === "NotIn" && has && e.values.includes(labels[e.key])) return false;
    if (e.operator === "Exists" && !has) return false;
    if (e.operator === "DoesNotExist" && has) return false;
  }
  return true;
}

const allContainers = (spec) => [...(spec.initContainers ?? []), ...(spec.containers ?? [])];

// A port given by name or number, as the container declares it (or undefined).
function containerPort(container, port) {
  return (container.ports ?? []).find((p) => (typeof port === "string" ? p.name === port : p.containerPort === port));
}
function podPort(spec, port) {
  for (const c of spec.containers ?? []) {
    const found = containerPort(c, port);
    if (found) return found;
  }
  return undefined;
}

// Flags of an argument list: Map of --flag -> [values] (true for a flag without a value).
function parseFlags(args) {
  const flags = new Map();
  for (let i = 0; i < args.length; i++) {
    if (!args[i].startsWith("--")) continue;
    const next = args[i + 1];
    const value = next !== undefined && !next.startsWith("--") ? next : true;
    if (!flags.has(args[i])) flags.set(args[i], []);
    flags.get(args[i]).push(value);
    if (value !== true) i++;
  }
  return flags;
}

// The q3vl command line of a container: { launcher: [...before q3vl], sub, flags: Map, group }
// or null. The image's entrypoint is q3vl, so a container without `command` runs `q3vl ARGS`.
// `q3vl group [OPTIONS] -- SUB ARGS` is read as SUB ARGS, with `group` the Map of its options.
function q3vlCommand(container) {
  const argv = [...(container.command ?? ["q3vl"]), ...(container.args ?? [])];
  const at = argv.findIndex((a) => path.basename(a) === "q3vl");
  if (at < 0) return null;
  let sub = argv[at + 1];
  let rest = argv.slice(at + 2);
  let group = null;
  if (sub === "group") {
    const dashes = rest.indexOf("--");
    group = parseFlags(dashes < 0 ? rest : rest.slice(0, dashes));
    const inner = dashes < 0 ? [] : rest.slice(dashes + 1);
    sub = inner[0];
    rest = inner.slice(1);
  }
  const flags = parseFlags(rest);
  return {
    launcher: argv.slice(0, at), sub, flags, group, flag: (f) => flags.get(f)?.at(-1),
    groupFlag: (f, fallback) => group?.get(f)?.at(-1) ?? fallback,
  };
}

// Ranks of one replica for --mesh vision=V,pp=P,tp=T,ep=E,dp=D: D * (V + P * max(T, E)).
function meshRanks(mesh) {
  const m = Object.fromEntries(mesh.split(",").map((kv) => kv.split("=")).map(([k, v]) => [k, Number(v)]));
  const { vision = 0, pp = 1, tp = 1, ep = 1, dp = 1 } = m;
  return dp * (vision + pp * Math.max(tp, ep));
}

const meshVision = (mesh) => Number(/(?:^|,)\s*vision=(\d+)/.exec(mesh)?.[1] ?? 0);

const mpirunNp = (launcher) => {
  const i = launcher.findIndex((a) => a === "-np" || a === "-n" || a === "--np");
  return i >= 0 ? Number(launcher[i + 1]) : undefined;
};

const probeSeconds = (probe) => (probe.periodSeconds ?? 10) * (probe.failureThreshold ?? 3);

// A LeaderWorkerSet of groups of several pods: every pod runs the leader's q3vl group command
// line, image and resources; the workers serve ssh on --ssh-port (probed there) and every pod
// mounts the group's ssh Secret at --ssh-dir and the model where the command reads it.
function groupCheck(lws) {
  const problems = [];
  const p = (msg) => problems.push(`${id(lws)}: ${msg}`);
  const lwt = lws.spec.leaderWorkerTemplate;
  if ((lwt.size ?? 1) <= 1) return problems;
  const leader = (lwt.leaderTemplate ?? lwt.workerTemplate).spec;
  const worker = lwt.workerTemplate.spec;
  const lc = leader.containers[0];
  const wc = worker.containers[0];
  const lcmd = q3vlCommand(lc);
  if (!lcmd?.group) return [`${id(lws)}: groups of ${lwt.size} pods, but the leader does not run q3vl group`];
  if (JSON.stringify(wc.args) !== JSON.stringify(lc.args) || JSON.stringify(wc.command) !== JSON.stringify(lc.command)) {
    p("the workers' command line is not the leader's (q3vl group runs the same one in every pod)");
  }
  if (wc.image !== lc.image) p(`the workers' image ${wc.image} is not the leader's ${lc.image}`);
  for (const r of ["cpu", "memory", "nvidia.com/gpu"]) {
    if (String(wc.resources?.limits?.[r]) !== String(lc.resources?.limits?.[r])) {
      p(`the workers' ${r} limit ${wc.resources?.limits?.[r]} is not the leader's ${lc.resources?.limits?.[r]}`);
    }
  }
  const sshPort = Number(lcmd.groupFlag("--ssh-port", "2222"));
  const port = containerPort(wc, "ssh");
  if (!port || port.containerPort !== sshPort) p(`the workers have no container port named ssh on --ssh-port ${sshPort}`);
  for (const k of ["readinessProbe", "livenessProbe"]) {
    const probePort = wc[k]?.tcpSocket?.port;
    if (probePort === undefined || containerPort(wc, probePort)?.containerPort !== sshPort) p(`the workers' ${k} is not a TCP check of the ssh port`);
  }
  const sshDir = lcmd.groupFlag("--ssh-dir", "/etc/q3vl/ssh");
  for (const [where, spec, c] of [["leader", leader, lc], ["worker", worker, wc]]) {
    const mount = (c.volumeMounts ?? []).find((m) => m.mountPath === sshDir);
    const volume = (spec.volumes ?? []).find((v) => v.name === mount?.name);
    if (!volume?.secret) p(`the ${where} does not mount the group's ssh Secret at --ssh-dir ${sshDir}`);
    const model = lcmd.flag("--model");
    const modelMount = (c.volumeMounts ?? []).find((m) => model === m.mountPath || String(model).startsWith(`${m.mountPath}/`));
    if (!modelMount) p(`the ${where} has no mount for --model ${model} (every rank loads its slice)`);
    const shm = (c.volumeMounts ?? []).find((m) => m.mountPath === "/dev/shm");
    if (!shm || (spec.volumes ?? []).find((v) => v.name === shm.name)?.emptyDir?.medium !== "Memory") {
      p(`the ${where}'s /dev/shm is not a memory-backed emptyDir`);
    }
  }
  return problems;
}

function crossCheck(objects) {
  const problems = [];
  const p = (msg) => problems.push(msg);
  const templates = podTemplates(objects);

  const names = new Set();
  for (const o of objects) {
    if (!o.metadata?.name) p(`${o.kind}: no metadata.name`);
    if (names.has(id(o))) p(`${id(o)}: defined twice`);
    names.add(id(o));
    if (o.metadata?.labels?.["app.kubernetes.io/name"] !== "q3vl") p(`${id(o)}: label app.kubernetes.io/name is not q3vl`);
  }

  const servedNames = new Set();
  for (const { where, template, lws, role } of templates) {
    const spec = template.spec;
    const labels = template.metadata?.labels ?? {};
    if (labels["app.kubernetes.io/name"] !== "q3vl") p(`${where}: pod label app.kubernetes.io/name is not q3vl`);
    if (!labels["app.kubernetes.io/component"]) p(`${where}: pod has no app.kubernetes.io/component label`);
    if (role === "leader" && labels["app.kubernetes.io/component"] !== "replica") p(`${where}: leader pods are not component=replica`);

    const volumes = new Map((spec.volumes ?? []).map((v) => [v.name, v]));
    for (const v of volumes.values()) {
      // An optional Secret is one the user creates (the group's ssh key: no key pair belongs in
      // a repository); the group rules below require it where it is read.
      if (v.secret && !v.secret.optional && !find(objects, "Secret", v.secret.secretName)) {
        p(`${where}: volume ${v.name} names Secret ${v.secret.secretName}, not in the build`);
      }
      if (v.persistentVolumeClaim && !find(objects, "PersistentVolumeClaim", v.persistentVolumeClaim.claimName)) {
        p(`${where}: volume ${v.name} names PVC ${v.persistentVolumeClaim.claimName}, not in the build`);
      }
    }

    for (const c of allContainers(spec)) {
      const cw = `${where} container ${c.name}`;
      if (!c.image) p(`${cw}: no image`);
      for (const kind of ["requests", "limits"]) {
        for (const r of ["cpu", "memory"]) if (!c.resources?.[kind]?.[r]) p(`${cw}: no resources.${kind}.${r}`);
      }
      const mounts = c.volumeMounts ?? [];
      for (const m of mounts) if (!volumes.has(m.name)) p(`${cw}: mounts volume ${m.name}, which the pod does not define`);
      const mountOf = (file) => mounts
        .filter((m) => file === m.mountPath || file.startsWith(`${m.mountPath.replace(/\/$/, "")}/`))
        .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];

      // $(VAR) in the command line must name a variable of the container.
      const env = new Map((c.env ?? []).map((e) => [e.name, e]));
      for (const a of [...(c.command ?? []), ...(c.args ?? [])]) {
        for (const [, v] of a.matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) if (!env.has(v)) p(`${cw}: $(${v}) is not in env`);
      }

      // Every probe's port is a port of this container.
      for (const kind of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        const probe = c[kind];
        if (!probe) continue;
        const port = probe.httpGet?.port ?? probe.tcpSocket?.port ?? probe.grpc?.port;
        if (port !== undefined && !containerPort(c, port)) p(`${cw}: ${kind} port ${port} is not a port of the container`);
      }

      const cmd = q3vlCommand(c);
      if (!cmd) continue;
      const isServer = cmd.sub === "serve" || cmd.sub === "coordinator";
      if (cmd.sub === "make-model") {
        const out = cmd.flag("--out");
        const m = typeof out === "string" && mountOf(out);
        if (!m || m.readOnly) p(`${cw}: make-model --out ${out} is not on a writable mount`);
      }
      if (!isServer) continue;
      // A worker pod's q3vl group serves ssh; the leader's mpirun starts its ranks, which
      // serve nothing themselves (groupCheck holds the workers to the leader's command line).
      if (role === "worker" && cmd.group) continue;
      if (!(spec.containers ?? []).includes(c)) p(`${cw}: q3vl ${cmd.sub} runs as an init container`);
      const num = (f) => Number(cmd.flag(f));
      if (cmd.flag("--host") !== "0.0.0.0") p(`${cw}: --host is ${cmd.flag("--host")}, not 0.0.0.0 (unreachable from other pods)`);
      const http = containerPort(c, "http");
      if (!http || http.containerPort !== num("--port")) p(`${cw}: --port ${cmd.flag("--port")} is not the container port named http`);
      const grpcPort = num("--grpc-port");
      const grpc = containerPort(c, "grpc");
      if (!grpc || grpc.containerPort !== grpcPort) p(`${cw}: --grpc-port ${cmd.flag("--grpc-port")} is not the container port named grpc`);
      const grpcProbes = ["startupProbe", "readinessProbe", "livenessProbe"].filter((k) => c[k]?.grpc);
      if (grpcProbes.length === 0) p(`${cw}: no gRPC probe`);
      for (const k of grpcProbes) if (c[k].grpc.port !== grpcPort) p(`${cw}: ${k} gRPC port ${c[k].grpc.port} != --grpc-port ${grpcPort}`);
      for (const k of ["startupProbe", "readinessProbe"]) {
        const get = c[k]?.httpGet;
        if (!get || get.path !== "/health" || containerPort(c, get.port)?.containerPort !== num("--port")) {
          p(`${cw}: ${k} is not an HTTP GET of /health on --port`);
        }
      }
      if (c.livenessProbe?.httpGet?.path === "/health") p(`${cw}: liveness on /health would restart a draining server`);

      for (const f of ["--model", "--api-key-file"]) {
        const file = cmd.flag(f);
        const m = typeof file === "string" && mountOf(file);
        if (!m) p(`${cw}: ${f} ${file} is on no volume mount`);
        else if (f === "--api-key-file" && !volumes.get(m.name)?.secret) p(`${cw}: --api-key-file is not on a Secret volume`);
      }
      servedNames.add(cmd.flag("--served-model-name"));

      if (cmd.sub === "serve") {
        // --coordinator HOST:PORT is a Service of the build whose port leads to the coordinator's --grpc-port.
        const [host, portText] = String(cmd.flag("--coordinator")).split(":");
        const svc = find(objects, "Service", host);
        const svcPort = svc?.spec.ports.find((sp) => sp.port === Number(portText));
        if (!svc || !svcPort) {
          p(`${cw}: --coordinator ${cmd.flag("--coordinator")} is no Service port of the build`);
        } else {
          for (const t of templates.filter((t) => selects({ matchLabels: svc.spec.selector }, t.template.metadata?.labels))) {
            const coord = (t.template.spec.containers ?? []).map(q3vlCommand).find((x) => x?.sub === "coordinator");
            const target = podPort(t.template.spec, svcPort.targetPort ?? svcPort.port);
            if (!coord || !target || target.containerPort !== Number(coord.flag("--grpc-port"))) {
              p(`${cw}: --coordinator ${cmd.flag("--coordinator")} does not reach the coordinator's --grpc-port`);
            }
          }
        }
        const adv = cmd.flag("--advertise-host");
        const podIp = env.get("POD_IP")?.valueFrom?.fieldRef?.fieldPath;
        if (adv !== "$(POD_IP)" || podIp !== "status.podIP") p(`${cw}: --advertise-host is not $(POD_IP) from status.podIP`);
        // Shared memory between ranks: a memory-backed emptyDir on /dev/shm.
        const shm = mounts.find((m) => m.mountPath === "/dev/shm");
        if (!shm || volumes.get(shm.name)?.emptyDir?.medium !== "Memory") p(`${cw}: /dev/shm is not a memory-backed emptyDir`);
        const mesh = cmd.flag("--mesh");
        // Pods of the group: a LeaderWorkerSet's size (a Deployment's pod is one).
        const pods = lws ? lws.spec.leaderWorkerTemplate.size ?? 1 : 1;
        const ranks = mesh ? meshRanks(mesh) : 1;
        if (cmd.group) {
          // q3vl group spreads the mesh's ranks evenly over the pods, the replica's leader rank
          // (after the vision ranks) in the leader pod.
          if (ranks % pods !== 0) p(`${cw}: --mesh ${mesh} has ${ranks} ranks, not a multiple of the group's ${pods} pods`);
          if (pods > 1 && meshVision(mesh) >= ranks / pods) p(`${cw}: the replica's leader rank would not be in the leader pod`);
          if (cmd.launcher.length > 0) p(`${cw}: q3vl group starts mpirun itself; got ${cmd.launcher.join(" ")} before it`);
        } else {
          if (pods > 1) p(`${cw}: a group of ${pods} pods needs q3vl group`);
          if (mesh) {
            const np = mpirunNp(cmd.launcher);
            if (path.basename(cmd.launcher[0] ?? "") !== "mpirun" || np !== ranks) {
              p(`${cw}: --mesh ${mesh} needs mpirun -np ${ranks}, got ${cmd.launcher.join(" ") || "no mpirun"}`);
            }
          }
        }
        if (cmd.flag("--backend") === "cuda") {
          const gpus = Number(c.resources?.limits?.["nvidia.com/gpu"]);
          if (gpus * pods !== ranks) p(`${cw}: ${ranks} CUDA ranks over ${pods} pod(s) but nvidia.com/gpu limit ${gpus} per pod`);
        }
      }
    }
    if (lws && role === "leader" && !(spec.containers ?? []).some((c) => q3vlCommand(c)?.sub === "serve")) {
      p(`${where}: the leader runs no q3vl serve`);
    }
  }
  for (const lws of objects.filter((o) => o.kind === "LeaderWorkerSet")) problems.push(...groupCheck(lws));
  if (servedNames.size > 1) p(`--served-model-name differs between the coordinator and replicas: ${[...servedNames].join(", ")}`);

  // Services: select pods of the build, and every targetPort is a port of those pods.
  for (const svc of objects.filter((o) => o.kind === "Service")) {
    const matched = svc.spec.selector
      ? templates.filter((t) => selects({ matchLabels: svc.spec.selector }, t.template.metadata?.labels))
      : [];
    if (matched.length === 0) p(`${id(svc)}: selects no pod of the build`);
    for (const sp of svc.spec.ports ?? []) {
      for (const t of matched) {
        const target = sp.targetPort ?? sp.port;
        if (!podPort(t.template.spec, target)) p(`${id(svc)}: targetPort ${target} is not a port of ${t.where}`);
      }
    }
  }
  // PodMonitors: select the coordinator and the replica leaders, and scrape a port they have.
  for (const pm of objects.filter((o) => o.kind === "PodMonitor")) {
    const matched = templates.filter((t) => selects(pm.spec.selector ?? {}, t.template.metadata?.labels));
    for (const component of ["coordinator", "replica"]) {
      if (!matched.some((t) => t.template.metadata?.labels?.["app.kubernetes.io/component"] === component)) {
        p(`${id(pm)}: selects no ${component} pod`);
      }
    }
    for (const ep of pm.spec.podMetricsEndpoints ?? []) {
      for (const t of matched) if (!podPort(t.template.spec, ep.port)) p(`${id(pm)}: port ${ep.port} is not a port of ${t.where}`);
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------
// Tests

test("the overlays are there", () => {
  for (const dir of [CPU_DEMO, BIG, CPU_GROUP, BIG_GROUP]) assert.ok(BUILDS.includes(dir), `k8s/${dir} is missing`);
});

for (const dir of BUILDS) {
  test(`k8s/${dir}: builds with kubectl kustomize, every object passes its strict schema check`, () => {
    const objects = build(dir);
    assert.ok(objects.length > 0, "the build yields no objects");
    assert.deepEqual(objects.flatMap(validateObject), []);
  });
  test(`k8s/${dir}: ports, probes, command lines and names agree`, () => {
    const objects = build(dir);
    for (const kind of ["Deployment", "Service", "Secret", "LeaderWorkerSet", "PodMonitor"]) {
      assert.ok(objects.some((o) => o.kind === kind), `no ${kind} in the build`);
    }
    assert.deepEqual(crossCheck(objects), []);
  });
}

const lwsOf = (objects) => objects.find((o) => o.kind === "LeaderWorkerSet");
const leaderOf = (objects) => lwsOf(objects).spec.leaderWorkerTemplate.leaderTemplate;
const coordinatorOf = (objects) => find(objects, "Deployment", "q3vl-coordinator");

test("base: API keys from a Secret file, group size 1, every pod runs q3vl group, image q3vl:latest", () => {
  const objects = build("base");
  const secret = objects.find((o) => o.kind === "Secret");
  assert.match(secret.metadata.name, /^q3vl-api-keys-/, "secretGenerator names it with a content hash");
  assert.ok(secret.data?.["api-keys"], "the Secret holds the file api-keys");
  const lws = lwsOf(objects);
  assert.equal(lws.spec.leaderWorkerTemplate.size, 1);
  for (const which of ["leaderTemplate", "workerTemplate"]) {
    const cmd = q3vlCommand(lws.spec.leaderWorkerTemplate[which].spec.containers[0]);
    assert.ok(cmd.group, `${which}: q3vl group`);
    assert.equal(cmd.sub, "serve", `${which}: group runs serve`);
  }
  // The group's ssh Secret is the user's to create, and optional: a group of one never reads it.
  const ssh = lws.spec.leaderWorkerTemplate.leaderTemplate.spec.volumes.find((v) => v.secret?.secretName === "q3vl-group-ssh");
  assert.equal(ssh?.secret.optional, true);
  for (const t of podTemplates(objects)) {
    for (const c of allContainers(t.template.spec)) assert.equal(c.image, "q3vl:latest", `${t.where} ${c.name}`);
  }
  // No key is ever given on a command line.
  for (const t of podTemplates(objects)) {
    for (const c of allContainers(t.template.spec)) assert.ok(!(c.args ?? []).includes("--api-key"), `${t.where} ${c.name}`);
  }
});

test("cpu-demo: 2 CPU replica groups, every server writes its demo model first, no GPU, no PVC", () => {
  const objects = build(CPU_DEMO);
  assert.equal(lwsOf(objects).spec.replicas, 2);
  assert.equal(lwsOf(objects).spec.leaderWorkerTemplate.size, 1);
  assert.ok(!objects.some((o) => o.kind === "PersistentVolumeClaim"));
  for (const t of podTemplates(objects).filter((x) => x.role !== "worker")) {  // size 1: no worker pods
    for (const c of allContainers(t.template.spec)) {
      assert.ok(!JSON.stringify(c.resources ?? {}).includes("nvidia.com/gpu"), `${t.where} ${c.name} asks for a GPU`);
      const cmd = q3vlCommand(c);
      if (cmd?.sub !== "serve" && cmd?.sub !== "coordinator") continue;
      const makers = (t.template.spec.initContainers ?? []).map(q3vlCommand).filter((x) => x?.sub === "make-model");
      assert.ok(makers.some((m) => m.flag("--out") === cmd.flag("--model") && m.flags.has("--force")),
        `${t.where}: no init container writes ${cmd.flag("--model")}`);
      assert.ok(makers.every((m) => m.flag("--seed") === "0"), `${t.where}: replicas must share the seed`);
    }
  }
  const replica = leaderOf(objects).spec.containers[0];
  assert.equal(replica.resources.limits.cpu, "2");
  assert.equal(replica.resources.limits.memory, "8Gi");
});

test("qwen3-vl-235b-8xh100: 8 GPUs, q3vl group (a local mpirun) tp=8,ep=8, read-only models PVC, 30-minute startup budget", () => {
  const objects = build(BIG);
  const pvc = find(objects, "PersistentVolumeClaim", "q3vl-models");
  assert.ok(pvc, "the PVC q3vl-models");
  assert.deepEqual(pvc.spec.accessModes, ["ReadOnlyMany"]);
  const leader = leaderOf(objects).spec;
  const c = leader.containers[0];
  assert.equal(Number(c.resources.limits["nvidia.com/gpu"]), 8);
  const cmd = q3vlCommand(c);
  assert.equal(cmd.sub, "serve");
  assert.ok(cmd.group, "q3vl group runs the mesh's 8 ranks under mpirun");
  assert.equal(lwsOf(objects).spec.leaderWorkerTemplate.size, 1);
  assert.equal(cmd.flag("--mesh"), "tp=8,ep=8");
  assert.equal(cmd.flag("--backend"), "cuda");
  assert.equal(cmd.flag("--gpu-memory-utilization"), "0.9");
  assert.equal(cmd.flag("--model"), "/models/Qwen3-VL-235B-A22B-Instruct");
  assert.ok(probeSeconds(c.startupProbe) >= 1800, `startup budget ${probeSeconds(c.startupProbe)} s`);
  const coordinator = coordinatorOf(objects).spec.template.spec;
  for (const [t, cont] of [[leader, c], [coordinator, coordinator.containers[0]]]) {
    const m = cont.volumeMounts.find((vm) => vm.mountPath === "/models");
    const v = t.volumes.find((vol) => vol.name === m?.name);
    assert.equal(v?.persistentVolumeClaim?.claimName, "q3vl-models", `${cont.name}: /models is the PVC`);
    assert.ok(m.readOnly && v.persistentVolumeClaim.readOnly, `${cont.name}: /models is read-only`);
  }
  const shm = leader.volumes.find((v) => v.name === c.volumeMounts.find((m) => m.mountPath === "/dev/shm").name);
  assert.equal(shm.emptyDir.medium, "Memory");
  assert.ok(shm.emptyDir.sizeLimit, "/dev/shm has a sizeLimit");
});

test("yamllint passes on every YAML file under k8s/", () => {
  const r = run("yamllint", ["-s", "-f", "parsable", "-c", path.join(K8S, ".yamllint"), K8S]);
  assert.equal(r.status, 0, `yamllint:\n${r.stdout}${r.stderr}`);
});

// Negative cases: each validator rejects what it exists to reject.

test("an unknown field in a Deployment is rejected", () => {
  for (const [where, set] of [
    ["spec", (d) => { d.spec.replicaCount = 2; }],
    ["container", (d) => { d.spec.template.spec.containers[0].imagePullPolicyX = "Always"; }],
    ["probe", (d) => { d.spec.template.spec.containers[0].livenessProbe.grpc.serviceName = "x"; }],
    ["pod metadata", (d) => { d.spec.template.metadata.label = { a: "b" }; }],
  ]) {
    const d = coordinatorOf(build(CPU_DEMO));
    assert.deepEqual(strictCore(Deployment, d, id(d)), [], "the unchanged Deployment passes");
    set(d);
    const problems = strictCore(Deployment, d, id(d));
    assert.equal(problems.length, 1, `${where}: ${problems.join("; ")}`);
    assert.match(problems[0], /unknown field/, where);
  }
  const d = coordinatorOf(build(CPU_DEMO));
  d.spec.replicas = "one";
  assert.match(strictCore(Deployment, d, id(d)).join(), /replicas must be integer/);
});

// Objects whose keys are data, not field names (string maps), where any key is allowed.
function isStringMap(obj, pointer) {
  const key = pointer.split("/").at(-1);
  if (["labels", "annotations", "limits", "requests", "data", "stringData", "nodeSelector", "matchLabels"].includes(key)) return true;
  return obj.kind === "Service" && pointer === "/spec/selector";
}

test("every object inside every schema-checked manifest rejects an added unknown field", () => {
  let checked = 0;
  for (const dir of BUILDS) {
    for (const original of build(dir)) {
      if (original.kind === "PodMonitor") continue;  // hand-checked shape only
      const pointers = [];
      const walk = (value, pointer) => {
        if (Array.isArray(value)) value.forEach((v, i) => walk(v, `${pointer}/${i}`));
        else if (value !== null && typeof value === "object" && !isStringMap(original, pointer)) {
          pointers.push(pointer);
          for (const [k, v] of Object.entries(value)) walk(v, `${pointer}/${k}`);
        }
      };
      walk(original, "");
      for (const pointer of pointers) {
        const obj = structuredClone(original);
        const node = pointer.split("/").slice(1).reduce((o, k) => o[k], obj);
        node.q3vlUnknownField = 1;
        const problems = validateObject(obj);
        assert.ok(problems.some((x) => x.includes("q3vlUnknownField")),
          `k8s/${dir} ${id(original)}${pointer}: an unknown field passed (${problems.join("; ") || "no problem reported"})`);
        checked++;
      }
    }
  }
  assert.ok(checked > 200, `only ${checked} objects checked`);
});

test("an unknown field in the LeaderWorkerSet is rejected", () => {
  for (const [where, set, expect] of [
    ["spec", (l) => { l.spec.replica = 3; }, /additional properties \(replica\)/],
    ["leaderWorkerTemplate", (l) => { l.spec.leaderWorkerTemplate.groupSize = 2; }, /additional properties \(groupSize\)/],
    ["leader container", (l) => { l.spec.leaderWorkerTemplate.leaderTemplate.spec.containers[0].gpus = 8; }, /gpus/],
    ["worker pod spec", (l) => { l.spec.leaderWorkerTemplate.workerTemplate.spec.nodeSelectors = {}; }, /nodeSelectors/],
    ["metadata", (l) => { l.metadata.label = { a: "b" }; }, /metadata\/label: unknown field/],
    ["enum", (l) => { l.spec.startupPolicy = "LeaderFirst"; }, /allowed values/],
    ["missing workerTemplate", (l) => { delete l.spec.leaderWorkerTemplate.workerTemplate; }, /required property 'workerTemplate'/],
  ]) {
    const lws = lwsOf(build(CPU_DEMO));
    set(lws);
    const problems = validateLws(lws);
    assert.ok(problems.some((x) => expect.test(x)), `${where}: ${problems.join("; ") || "accepted"}`);
  }
});

test("a probe port that names no container port is caught", () => {
  const objects = build(CPU_DEMO);
  leaderOf(objects).spec.containers[0].readinessProbe.httpGet.port = "metrics";
  assert.ok(crossCheck(objects).some((x) => /readinessProbe port metrics is not a port of the container/.test(x)));
});

test("a gRPC probe on another port than --grpc-port is caught", () => {
  const objects = build(BIG);
  const c = leaderOf(objects).spec.containers[0];
  c.ports.push({ name: "grpc-alt", containerPort: 50053 });
  c.livenessProbe.grpc.port = 50053;
  assert.ok(crossCheck(objects).some((x) => /livenessProbe gRPC port 50053 != --grpc-port 50052/.test(x)));
});

test("a Service targetPort that the selected pods lack is caught", () => {
  const objects = build(CPU_DEMO);
  find(objects, "Service", "q3vl-coordinator").spec.ports[1].targetPort = "control";
  const problems = crossCheck(objects);
  assert.ok(problems.some((x) => /targetPort control is not a port of Deployment\/q3vl-coordinator/.test(x)), problems.join("; "));
});

// Sets the value after `flag` in a container's args.
function setArg(container, flag, value) {
  const i = container.args.indexOf(flag);
  assert.ok(i >= 0, `no ${flag} in the args`);
  container.args[i + 1] = value;
}

test("mismatched names and counts between objects are caught", () => {
  const cases = [
    [(o) => { leaderOf(o).spec.volumes.find((v) => v.secret).secret.secretName = "q3vl-api-keys"; },
      /names Secret q3vl-api-keys, not in the build/],
    [(o) => { setArg(leaderOf(o).spec.containers[0], "--coordinator", "coordinator:50051"); },
      /--coordinator coordinator:50051 is no Service port/],
    [(o) => { leaderOf(o).spec.containers[0].resources.limits["nvidia.com/gpu"] = 4; },
      /8 CUDA ranks over 1 pod\(s\) but nvidia.com\/gpu limit 4 per pod/],
    [(o) => { const c = leaderOf(o).spec.containers[0]; c.args = c.args.slice(c.args.indexOf("--") + 1); },
      /--mesh tp=8,ep=8 needs mpirun -np 8, got no mpirun/],
    [(o) => { setArg(leaderOf(o).spec.containers[0], "--served-model-name", "other"); }, /--served-model-name differs/],
    [(o) => { leaderOf(o).spec.containers[0].env = []; }, /\$\(POD_IP\) is not in env/],
    [(o) => { leaderOf(o).spec.volumes.find((v) => v.name === "dshm").emptyDir = {}; }, /\/dev\/shm is not a memory-backed emptyDir/],
  ];
  for (const [mutate, expect] of cases) {
    const objects = build(BIG);
    mutate(objects);
    const problems = crossCheck(objects);
    assert.ok(problems.some((x) => expect.test(x)), `${expect}: ${problems.join("; ") || "nothing caught"}`);
  }
});

test("cpu-demo-2pod: one group of two pods, one tp=2 rank in each, both write the demo model", () => {
  const objects = build(CPU_GROUP);
  const lws = lwsOf(objects);
  assert.equal(lws.spec.replicas, 1);
  assert.equal(lws.spec.leaderWorkerTemplate.size, 2);
  for (const which of ["leaderTemplate", "workerTemplate"]) {
    const spec = lws.spec.leaderWorkerTemplate[which].spec;
    const cmd = q3vlCommand(spec.containers[0]);
    assert.equal(cmd.flag("--mesh"), "tp=2", which);
    const makers = (spec.initContainers ?? []).map(q3vlCommand).filter((x) => x?.sub === "make-model");
    assert.ok(makers.some((m) => m.flag("--out") === cmd.flag("--model") && m.flag("--seed") === "0"), `${which}: writes the model`);
  }
  assert.deepEqual(groupCheck(lws), []);
});

test("qwen3-vl-235b-2x8xh100: groups of two 8-GPU pods, tp=8,ep=16, the PVC on both", () => {
  const objects = build(BIG_GROUP);
  const lwt = lwsOf(objects).spec.leaderWorkerTemplate;
  assert.equal(lwt.size, 2);
  const cmd = q3vlCommand(lwt.leaderTemplate.spec.containers[0]);
  assert.equal(cmd.flag("--mesh"), "tp=8,ep=16");
  assert.equal(meshRanks(cmd.flag("--mesh")), 16);
  for (const which of ["leaderTemplate", "workerTemplate"]) {
    const spec = lwt[which].spec;
    assert.equal(Number(spec.containers[0].resources.limits["nvidia.com/gpu"]), 8, which);
    assert.equal(spec.containers[0].image, "q3vl-cuda:latest", which);
    assert.equal(spec.volumes.find((v) => v.name === "models").persistentVolumeClaim?.claimName, "q3vl-models", which);
    assert.ok(spec.tolerations?.some((t) => t.key === "nvidia.com/gpu"), `${which}: tolerates the GPU taint`);
  }
  assert.ok(lwt.leaderTemplate.spec.containers[0].env.some((e) => e.name === "NCCL_SOCKET_IFNAME"));
});

test("a group whose pods disagree is caught", () => {
  const cases = [
    [(l) => { l.spec.leaderWorkerTemplate.workerTemplate.spec.containers[0].args.push("--max-num-seqs", "8"); },
      /the workers' command line is not the leader's/],
    [(l) => { l.spec.leaderWorkerTemplate.workerTemplate.spec.containers[0].resources.limits["nvidia.com/gpu"] = 4; },
      /the workers' nvidia.com\/gpu limit 4 is not the leader's 8/],
    [(l) => { l.spec.leaderWorkerTemplate.workerTemplate.spec.containers[0].ports[0].containerPort = 22; },
      /no container port named ssh on --ssh-port 2222/],
    [(l) => { delete l.spec.leaderWorkerTemplate.workerTemplate.spec.containers[0].readinessProbe; },
      /readinessProbe is not a TCP check of the ssh port/],
    [(l) => { const c = l.spec.leaderWorkerTemplate.workerTemplate.spec.containers[0]; c.volumeMounts = c.volumeMounts.filter((m) => m.mountPath !== "/etc/q3vl/ssh"); },
      /the worker does not mount the group's ssh Secret/],
    [(l) => { const c = l.spec.leaderWorkerTemplate.workerTemplate.spec.containers[0]; c.volumeMounts = c.volumeMounts.filter((m) => m.mountPath !== "/models"); },
      /the worker has no mount for --model/],
  ];
  for (const [mutate, expect] of cases) {
    const lws = lwsOf(build(BIG_GROUP));
    assert.deepEqual(groupCheck(lws), []);
    mutate(lws);
    const problems = groupCheck(lws);
    assert.ok(problems.some((x) => expect.test(x)), `${expect}: ${problems.join("; ") || "nothing caught"}`);
  }
  // The mesh must divide over the pods, with the replica's leader rank in the leader pod.
  for (const [mesh, expect] of [["tp=8,ep=8,vision=1", /has 9 ranks, not a multiple of the group's 2 pods/],
    ["tp=4,ep=4", /4 CUDA ranks over 2 pod\(s\) but nvidia.com\/gpu limit 8 per pod/]]) {
    const objects = build(BIG_GROUP);
    for (const which of ["leaderTemplate", "workerTemplate"]) setArg(lwsOf(objects).spec.leaderWorkerTemplate[which].spec.containers[0], "--mesh", mesh);
    const problems = crossCheck(objects);
    assert.ok(problems.some((x) => expect.test(x)), `${mesh}: ${problems.join("; ") || "nothing caught"}`);
  }
  const plain = build(CPU_GROUP);
  const c = leaderOf(plain).spec.containers[0];
  c.args = c.args.slice(c.args.indexOf("--") + 1);
  assert.ok(crossCheck(plain).some((x) => /a group of 2 pods needs q3vl group/.test(x)));
});

test("a PodMonitor of the wrong shape is caught", () => {
  const pm = build("base").find((o) => o.kind === "PodMonitor");
  assert.deepEqual(podMonitorShape(pm), []);
  const noPath = structuredClone(pm);
  delete noPath.spec.podMetricsEndpoints[0].path;
  assert.match(podMonitorShape(noPath).join(), /path must be an absolute path/);
  const typo = structuredClone(pm);
  typo.spec.podMetricEndpoints = typo.spec.podMetricsEndpoints;
  delete typo.spec.podMetricsEndpoints;
  assert.match(podMonitorShape(typo).join(), /non-empty list[\s\S]*podMetricEndpoints: not a field/);
});
