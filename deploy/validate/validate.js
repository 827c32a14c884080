#!/usr/bin/env node
// Offline validation of deploy/ (run by scripts/lint_deploy.sh after `npm ci` in this folder).
//
//   node validate.js k8s DIR [ROOT]        every manifest of the kustomize directory DIR
//   node validate.js compose FILE [ROOT]   project rules for the docker-compose file (its schema is
//                                          checked by `docker-compose config -q`)
//   node validate.js dockerfile FILE       dockerfile-utils and dockerfilelint
//   node validate.js self-test ROOT        broken variants of the real files must be rejected, by the
//                                          stage meant to catch them (so no stage passes vacuously)
//
// Kubernetes manifests go through four stages:
//   yaml    parsed as YAML 1.1 (what kubectl reads), duplicate keys and parse warnings are findings;
//   schema  the Kubernetes OpenAPI schemas (kubernetes-models: ajv validators generated from the API's
//           OpenAPI spec, ~1.30): types, required fields, formats such as quantities and int-or-string;
//   strict  unknown fields, like `kubectl --validate=strict` or kubeconform -strict: every document is
//           type-checked by TypeScript against kubernetes-types (generated from the same OpenAPI spec),
//           whose excess-property check rejects misspelt or misplaced fields (quantities must be quoted
//           strings there);
//   policy  this project's rules (non-root, read-only root, probes, sizes, flags the server defines...).
// Exit status 1 on any finding.
'use strict';

const fs = require('fs');
const path = require('path');
const YAML = require('yaml');

// ---------------------------------------------------------------------------------------------- common

class Findings {
  constructor() { this.items = []; }
  add(stage, where, message) { this.items.push({ stage, where, message }); }
  get count() { return this.items.length; }
  print(stream = process.stderr) {
    for (const f of this.items) stream.write(`  [${f.stage}] ${f.where}: ${f.message}\n`);
  }
}

function loadYamlDocs(name, text, findings) {
  const docs = YAML.parseAllDocuments(text, { version: '1.1', uniqueKeys: true, merge: true, prettyErrors: true });
  const out = [];
  if (!Array.isArray(docs)) {  // an EmptyStream
    findings.add('yaml', name, 'no YAML document');
    return out;
  }
  docs.forEach((doc, i) => {
    const where = `${name}#${i + 1}`;
    for (const e of doc.errors) findings.add('yaml', where, e.message.split('\n')[0]);
    for (const w of doc.warnings) findings.add('yaml', where, w.message.split('\n')[0]);
    if (doc.errors.length) return;
    const value = doc.toJS({ maxAliasCount: 100 });
    if (value === null || value === undefined) return;
    out.push({ where, value });
  });
  return out;
}

function isObject(x) { return x !== null && typeof x === 'object' && !Array.isArray(x); }

// Flags of nt-server: read from server/main.cc when the checkout has it, so a manifest can only use
// flags the server defines.
const FALLBACK_FLAGS = ['address', 'threads', 'max_message_bytes', 'memory_budget_mb', 'upload_budget_mb',
  'upload_ttl_s', 'max_request_seconds', 'max_concurrent_requests', 'tls_cert_file', 'tls_key_file',
  'tls_client_ca_file', 'auth_token_file', 'metrics_address', 'port_file'];
const FLAG_DEFAULTS = { memory_budget_mb: 8192, upload_budget_mb: 2048, max_message_bytes: 256 * 2 ** 20 };
const DRAIN_SECONDS = 10;  // nt-server's drain after SIGTERM (server/main.cc)

function serverFlags(root) {
  const main = root && path.join(root, 'server', 'main.cc');
  if (main && fs.existsSync(main)) {
    const names = [...fs.readFileSync(main, 'utf8').matchAll(/ABSL_FLAG\(\s*[\w:<>]+\s*,\s*(\w+)\s*,/g)].map(m => m[1]);
    if (names.length) return new Set(names);
  }
  return new Set(FALLBACK_FLAGS);
}

// --name=value arguments -> Map; anything else is a finding.
function parseFlags(args, known, where, findings) {
  const flags = new Map();
  for (const a of args || []) {
    const m = /^--([a-z0-9_]+)=(.*)$/.exec(String(a));
    if (!m) { findings.add('policy', where, `argument ${JSON.stringify(a)}: expected --flag=value`); continue; }
    if (!known.has(m[1])) findings.add('policy', where, `--${m[1]}: nt-server has no such flag`);
    if (flags.has(m[1])) findings.add('policy', where, `--${m[1]} given twice`);
    flags.set(m[1], m[2]);
  }
  return flags;
}

function portOf(hostPort) {
  const m = /:(\d+)$/.exec(hostPort || '');
  return m ? Number(m[1]) : null;
}

// Kubernetes quantity -> bytes (memory) or cores (cpu).
function quantity(q) {
  const m = /^([0-9.]+)([a-zA-Z]*)$/.exec(String(q));
  if (!m) return NaN;
  const units = { '': 1, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40 };
  return m[2] in units ? Number(m[1]) * units[m[2]] : NaN;
}

function selects(selector, labels) {
  return isObject(selector) && Object.keys(selector).length > 0 &&
    Object.entries(selector).every(([k, v]) => labels && labels[k] === v);
}

// ------------------------------------------------------------------------------------ schema (ajv)

function modelClass(apiVersion, kind) {
  if (typeof apiVersion !== 'string' || typeof kind !== 'string') return null;
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  let mod;
  try {
    mod = require(group ? `kubernetes-models/${group}/${version}` : `kubernetes-models/${version}`);
  } catch (e) {
    return null;
  }
  return typeof mod[kind] === 'function' ? mod[kind] : null;
}

function schemaStage(docs, findings) {
  for (const d of docs) {
    const { apiVersion, kind } = d.value;
    const Model = modelClass(apiVersion, kind);
    if (!Model) {
      findings.add('schema', d.where, `unknown apiVersion/kind ${apiVersion}/${kind}`);
      continue;
    }
    try {
      new Model(d.value).validate();
    } catch (e) {
      const errors = e.errors || [{ instancePath: '', message: e.message }];
      for (const err of errors) {
        findings.add('schema', d.where, `${err.instancePath || '/'} ${err.message}` +
          (err.params && err.params.additionalProperty ? ` (${err.params.additionalProperty})` : ''));
      }
    }
  }
}

// ------------------------------------------------------------------------ strict (TypeScript check)

function typesModule(apiVersion) {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  return `kubernetes-types/${group ? group.split('.')[0] : 'core'}/${version}`;
}

const libCache = new Map();

function strictStage(docs, findings) {
  const ts = require('typescript');
  const imports = new Map();
  const spans = [];
  let body = '';
  for (const d of docs) {
    const { apiVersion, kind } = d.value;
    if (typeof apiVersion !== 'string' || typeof kind !== 'string' || !/^[A-Za-z][A-Za-z0-9]*$/.test(kind)) continue;
    const mod = typesModule(apiVersion);
    if (!imports.has(mod)) imports.set(mod, `m${imports.size}`);
    const start = body.length;
    body += `export const doc${spans.length}: ${imports.get(mod)}.${kind} = ${JSON.stringify(d.value, null, 2)};\n`;
    spans.push({ where: d.where, start, end: body.length });
  }
  if (!spans.length) return;
  let header = '';
  for (const [mod, alias] of imports) header += `import type * as ${alias} from ${JSON.stringify(mod)};\n`;
  const source = header + body;
  const fileName = path.join(__dirname, '__manifests__.ts');
  const options = {
    strict: true, noEmit: true, skipLibCheck: true, types: [], lib: ['lib.es2020.d.ts'],
    target: ts.ScriptTarget.ES2020, module: ts.ModuleKind.CommonJS, moduleResolution: ts.ModuleResolutionKind.Node10,
  };
  const host = ts.createCompilerHost(options, true);
  const sf = ts.createSourceFile(fileName, source, ts.ScriptTarget.ES2020, true);
  const { getSourceFile, fileExists, readFile } = host;
  // The .d.ts files are parsed once per process (the self-test checks many variants).
  host.getSourceFile = (f, ...rest) => {
    if (f === fileName) return sf;
    if (!libCache.has(f)) libCache.set(f, getSourceFile.call(host, f, ...rest));
    return libCache.get(f);
  };
  host.fileExists = f => f === fileName || fileExists.call(host, f);
  host.readFile = f => (f === fileName ? source : readFile.call(host, f));
  const program = ts.createProgram([fileName], options, host);
  for (const diag of ts.getPreEmitDiagnostics(program)) {
    const message = ts.flattenDiagnosticMessageText(diag.messageText, ' ');
    if (!diag.file || diag.file.fileName !== fileName) {
      findings.add('strict', 'typescript', message);
      continue;
    }
    const pos = diag.start - header.length;
    const span = spans.find(s => pos >= s.start && pos < s.end);
    findings.add('strict', span ? `${span.where} ${jsonPath(ts, sf, diag.start)}` : 'imports', message);
  }
}

// The JSON path (spec.template.spec.containers[0].name) of the node at `pos` in a generated literal.
function jsonPath(ts, sf, pos) {
  let node = sf;
  for (;;) {
    const child = node.getChildren(sf).find(c => c.getStart(sf) <= pos && pos < c.getEnd());
    if (!child) break;
    node = child;
  }
  const parts = [];
  for (let n = node; n && n !== sf; n = n.parent) {
    const p = n.parent;
    if (!p) break;
    if (ts.isPropertyAssignment(p) && p.initializer === n) parts.unshift(`.${p.name.text}`);
    else if (ts.isPropertyAssignment(n) && p && ts.isObjectLiteralExpression(p) && node === n.name) parts.unshift(`.${n.name.text}`);
    else if (ts.isArrayLiteralExpression(p)) parts.unshift(`[${p.elements.indexOf(n)}]`);
    else if (ts.isVariableDeclaration(p)) break;
  }
  return parts.join('').replace(/^\./, '') || '/';
}

// ------------------------------------------------------------------------------------- kustomize

const KUSTOMIZATION_FIELDS = new Set(['apiVersion', 'kind', 'metadata', 'resources', 'components', 'namespace',
  'namePrefix', 'nameSuffix', 'labels', 'commonLabels', 'commonAnnotations', 'images', 'replicas', 'patches',
  'patchesStrategicMerge', 'patchesJson6902', 'configMapGenerator', 'secretGenerator', 'generatorOptions',
  'replacements', 'vars', 'crds', 'configurations', 'generators', 'transformers', 'validators', 'openapi',
  'buildMetadata', 'sortOptions', 'helmCharts', 'helmGlobals', 'bases']);

// files: Map name -> text (the directory's *.yaml / *.yml). Returns the names of the listed resources.
function kustomizationStage(files, findings) {
  const name = ['kustomization.yaml', 'kustomization.yml', 'Kustomization'].find(n => files.has(n));
  if (!name) {
    findings.add('kustomize', '.', 'no kustomization.yaml');
    return [...files.keys()];
  }
  const docs = loadYamlDocs(name, files.get(name), findings);
  if (docs.length !== 1 || !isObject(docs[0].value)) {
    findings.add('kustomize', name, 'expected one mapping');
    return [];
  }
  const k = docs[0].value;
  if (k.apiVersion !== 'kustomize.config.k8s.io/v1beta1') findings.add('kustomize', name, `apiVersion ${k.apiVersion}`);
  if (k.kind !== 'Kustomization') findings.add('kustomize', name, `kind ${k.kind}`);
  for (const key of Object.keys(k)) {
    if (!KUSTOMIZATION_FIELDS.has(key)) findings.add('kustomize', name, `unknown field ${key}`);
  }
  if ('namespace' in k) findings.add('policy', name, 'the base stays namespace-agnostic: set namespace in an overlay or with -n');
  const resources = Array.isArray(k.resources) ? k.resources : [];
  if (!Array.isArray(k.resources) || !resources.length) findings.add('kustomize', name, 'resources: expected a non-empty list');
  const seen = new Set();
  for (const r of resources) {
    if (typeof r !== 'string') { findings.add('kustomize', name, `resource ${JSON.stringify(r)}: expected a file name`); continue; }
    if (seen.has(r)) findings.add('kustomize', name, `resource ${r} listed twice`);
    seen.add(r);
    if (!files.has(r)) findings.add('kustomize', name, `resource ${r}: no such file in the directory`);
  }
  for (const f of files.keys()) {
    if (f !== name && !seen.has(f)) findings.add('kustomize', name, `${f} is not listed in resources`);
  }
  return resources.filter(r => typeof r === 'string' && files.has(r));
}

// ---------------------------------------------------------------------------------------- policy

function k8sPolicy(docs, known, findings) {
  const byKind = kind => docs.filter(d => d.value.kind === kind);
  const ids = new Set();
  for (const d of docs) {
    const v = d.value;
    const id = `${v.kind}/${v.metadata && v.metadata.name}`;
    if (ids.has(id)) findings.add('policy', d.where, `${id} defined twice`);
    ids.add(id);
    if (v.metadata && v.metadata.namespace) findings.add('policy', d.where, 'metadata.namespace set: keep the manifests namespace-agnostic');
  }
  const secrets = new Map(byKind('Secret').map(d => [d.value.metadata.name, d]));
  const hpas = byKind('HorizontalPodAutoscaler');
  const deployments = byKind('Deployment');
  if (deployments.length !== 1) findings.add('policy', 'k8s', `expected one Deployment, found ${deployments.length}`);

  for (const d of deployments) {
    const dep = d.value;
    const w = d.where;
    const spec = dep.spec || {};
    const pod = (spec.template && spec.template.spec) || {};
    const podLabels = (spec.template && spec.template.metadata && spec.template.metadata.labels) || {};
    const annotations = (spec.template && spec.template.metadata && spec.template.metadata.annotations) || {};
    if (hpas.some(h => h.value.spec && h.value.spec.scaleTargetRef && h.value.spec.scaleTargetRef.name === dep.metadata.name) &&
        'replicas' in spec) {
      findings.add('policy', w, 'spec.replicas is set but an HPA owns the replica count (each apply would reset it)');
    }
    if (!selects(spec.selector && spec.selector.matchLabels, podLabels)) findings.add('policy', w, 'selector does not match the pod labels');
    const psc = pod.securityContext || {};
    const containers = pod.containers || [];
    if (containers.length !== 1) findings.add('policy', w, `expected one container, found ${containers.length}`);
    const volumes = new Map((pod.volumes || []).map(v => [v.name, v]));
    if (pod.automountServiceAccountToken !== false) findings.add('policy', w, 'automountServiceAccountToken should be false (the server needs no API access)');

    for (const c of containers) {
      const cw = `${w} container ${c.name}`;
      const csc = c.securityContext || {};
      const eff = key => (key in csc ? csc[key] : psc[key]);
      if (eff('runAsNonRoot') !== true) findings.add('policy', cw, 'runAsNonRoot must be true');
      if (eff('runAsUser') !== 10001) findings.add('policy', cw, 'runAsUser must be 10001 (the image\'s user)');
      const seccomp = eff('seccompProfile');
      if (!seccomp || seccomp.type !== 'RuntimeDefault') findings.add('policy', cw, 'seccompProfile must be RuntimeDefault');
      if (csc.readOnlyRootFilesystem !== true) findings.add('policy', cw, 'readOnlyRootFilesystem must be true');
      if (csc.allowPrivilegeEscalation !== false) findings.add('policy', cw, 'allowPrivilegeEscalation must be false');
      if (csc.privileged === true) findings.add('policy', cw, 'privileged');
      const caps = csc.capabilities || {};
      if (!(caps.drop || []).includes('ALL')) findings.add('policy', cw, 'capabilities.drop must include ALL');
      if ((caps.add || []).length) findings.add('policy', cw, 'capabilities.add must be empty');
      if (c.command) findings.add('policy', cw, 'command overrides the image ENTRYPOINT; use args');

      const flags = parseFlags(c.args, known, cw, findings);
      const grpcPort = portOf(flags.get('address'));
      const metricsPort = portOf(flags.get('metrics_address'));
      if (!flags.has('address') || !/^0\.0\.0\.0:\d+$/.test(flags.get('address'))) findings.add('policy', cw, '--address must be 0.0.0.0:PORT');
      if (!flags.has('metrics_address') || !/^0\.0\.0\.0:\d+$/.test(flags.get('metrics_address'))) {
        findings.add('policy', cw, '--metrics_address must be 0.0.0.0:PORT (scraped from outside the pod)');
      }
      const ports = c.ports || [];
      const portByName = new Map(ports.map(p => [p.name, p.containerPort]));
      for (const [want, label] of [[grpcPort, 'grpc'], [metricsPort, 'metrics']]) {
        if (want && portByName.get(label) !== want) findings.add('policy', cw, `container port '${label}' must be ${want}`);
      }
      // Annotations for Prometheus' pod discovery.
      if (annotations['prometheus.io/scrape'] !== 'true') findings.add('policy', w, 'annotation prometheus.io/scrape must be "true"');
      if (metricsPort && annotations['prometheus.io/port'] !== String(metricsPort)) {
        findings.add('policy', w, `annotation prometheus.io/port must be "${metricsPort}" (--metrics_address)`);
      }
      if ((annotations['prometheus.io/path'] || '/metrics') !== '/metrics') findings.add('policy', w, 'annotation prometheus.io/path must be /metrics');

      // Probes: the kubelet's grpc probe speaks plaintext only; with TLS they must exec `nt health`.
      const tls = flags.has('tls_cert_file') || flags.has('tls_key_file');
      for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
        const p = c[probe];
        if (!p) { findings.add('policy', cw, `${probe} missing`); continue; }
        if (tls) {
          const cmd = ((p.exec && p.exec.command) || []).join(' ');
          if (p.grpc) findings.add('policy', cw, `${probe}: the kubelet's grpc probe cannot do TLS; use exec: nt health --tls_ca=...`);
          else if (!/\bnt health\b/.test(cmd) || !/--tls_ca/.test(cmd)) findings.add('policy', cw, `${probe}: expected exec of nt health with --tls_ca`);
        } else if (!p.grpc || p.grpc.port !== grpcPort) {
          findings.add('policy', cw, `${probe}: expected grpc probe on port ${grpcPort}`);
        }
      }

      // Resources, threads and memory budgets.
      const res = c.resources || {};
      for (const kind of ['requests', 'limits']) {
        for (const r of ['cpu', 'memory']) {
          if (!(res[kind] && res[kind][r] !== undefined)) findings.add('policy', cw, `resources.${kind}.${r} missing`);
        }
      }
      const cpuLimit = quantity(res.limits && res.limits.cpu);
      const memLimit = quantity(res.limits && res.limits.memory);
      if (Number.isFinite(cpuLimit) && !Number.isInteger(cpuLimit)) findings.add('policy', cw, 'the cpu limit should be whole cores (one engine thread per core)');
      const threads = flags.get('threads');
      const envRef = /^\$\((\w+)\)$/.exec(threads || '');
      if (envRef) {
        const e = (c.env || []).find(x => x.name === envRef[1]);
        const ref = e && e.valueFrom && e.valueFrom.resourceFieldRef;
        if (!ref || ref.resource !== 'limits.cpu' || String(ref.divisor || '1') !== '1' || (ref.containerName && ref.containerName !== c.name)) {
          findings.add('policy', cw, `--threads=$(${envRef[1]}): env ${envRef[1]} must come from resourceFieldRef limits.cpu, divisor 1`);
        }
      } else if (Number(threads) !== cpuLimit) {
        findings.add('policy', cw, `--threads (${threads}) must equal the cpu limit (${cpuLimit}); --threads=0 would use every core of the node`);
      }
      const mib = name => (flags.has(name) ? Number(flags.get(name)) : FLAG_DEFAULTS[name]);
      const budget = mib('memory_budget_mb') * 2 ** 20;
      const uploads = mib('upload_budget_mb') * 2 ** 20;
      const messages = 2 * mib('max_message_bytes');
      if (!Number.isFinite(memLimit)) {
        findings.add('policy', cw, 'no usable memory limit');
      } else {
        if (budget > 0.75 * memLimit) findings.add('policy', cw, `--memory_budget_mb (${budget / 2 ** 20} MiB) must stay below 75% of the memory limit (${memLimit / 2 ** 20} MiB)`);
        if (budget + uploads + messages > 0.9 * memLimit) {
          findings.add('policy', cw, `memory budget + upload budget + two messages (${(budget + uploads + messages) / 2 ** 20} MiB) leave under 10% of the memory limit`);
        }
      }
      if (Number.isFinite(quantity(res.requests && res.requests.cpu)) && quantity(res.requests.cpu) !== cpuLimit) {
        findings.add('policy', cw, 'cpu request != cpu limit: the HPA measures utilization against the request, the threads follow the limit');
      }

      // Shutdown: preStop sleep + the server's drain must fit in the grace period.
      const pre = c.lifecycle && c.lifecycle.preStop;
      const sleepCmd = pre && pre.exec && pre.exec.command;
      const preStop = sleepCmd && /sleep$/.test(sleepCmd[0]) ? Number(sleepCmd[1]) : (pre && pre.sleep ? pre.sleep.seconds : 0);
      const grace = pod.terminationGracePeriodSeconds === undefined ? 30 : pod.terminationGracePeriodSeconds;
      if (!(grace > DRAIN_SECONDS + preStop)) {
        findings.add('policy', w, `terminationGracePeriodSeconds (${grace}) must exceed preStop (${preStop} s) + the server's ${DRAIN_SECONDS} s drain`);
      }

      // The token: a read-only mount of an existing Secret holding the file --auth_token_file names.
      const tokenFile = flags.get('auth_token_file');
      if (!tokenFile) {
        findings.add('policy', cw, '--auth_token_file missing (default manifests: plaintext with a bearer token)');
      } else {
        const mount = (c.volumeMounts || []).find(m => tokenFile.startsWith(m.mountPath.replace(/\/?$/, '/')));
        const vol = mount && volumes.get(mount.name);
        if (!mount || !vol || !vol.secret) {
          findings.add('policy', cw, `--auth_token_file ${tokenFile} is not inside a Secret volume mount`);
        } else {
          if (mount.readOnly !== true) findings.add('policy', cw, `volumeMount ${mount.name} must be readOnly`);
          const rel = tokenFile.slice(mount.mountPath.replace(/\/?$/, '/').length);
          const secret = secrets.get(vol.secret.secretName);
          const item = (vol.secret.items || []).find(i => i.path === rel);
          const key = vol.secret.items ? item && item.key : rel;
          if (!key) findings.add('policy', cw, `secret volume ${vol.name} has no item with path ${rel}`);
          if (!secret) {
            findings.add('policy', cw, `Secret ${vol.secret.secretName} is not among the manifests`);
          } else if (key) {
            const data = Object.assign({}, secret.value.data, secret.value.stringData);
            if (!(key in data)) findings.add('policy', secret.where, `Secret ${vol.secret.secretName} has no key ${key}`);
          }
        }
      }
      for (const m of c.volumeMounts || []) {
        const v = volumes.get(m.name);
        if (!v) findings.add('policy', cw, `volumeMount ${m.name}: no such volume`);
      }
    }

    // Services, HPA and PDB must point at these pods.
    for (const s of byKind('Service')) {
      const svc = s.value.spec || {};
      if (svc.clusterIP !== 'None') findings.add('policy', s.where, 'clusterIP must be None (headless: one DNS record per pod)');
      if (!selects(svc.selector, podLabels)) findings.add('policy', s.where, 'selector does not select the Deployment\'s pods');
      const cPorts = new Map();
      for (const c of containers) for (const p of c.ports || []) { cPorts.set(p.name, p.containerPort); cPorts.set(p.containerPort, p.containerPort); }
      const want = { grpc: 50051, metrics: 9464 };
      for (const [name, port] of Object.entries(want)) {
        const p = (svc.ports || []).find(x => x.name === name);
        if (!p || p.port !== port) findings.add('policy', s.where, `port ${name} must be ${port}`);
      }
      for (const p of svc.ports || []) {
        const target = p.targetPort === undefined ? p.port : p.targetPort;
        if (!cPorts.has(target)) findings.add('policy', s.where, `port ${p.name}: targetPort ${target} is no container port`);
      }
    }
    for (const h of hpas) {
      const hs = h.value.spec || {};
      const ref = hs.scaleTargetRef || {};
      if (ref.kind !== 'Deployment' || ref.name !== dep.metadata.name || ref.apiVersion !== 'apps/v1') {
        findings.add('policy', h.where, `scaleTargetRef must be apps/v1 Deployment ${dep.metadata.name}`);
      }
      if (!(hs.minReplicas >= 2)) findings.add('policy', h.where, 'minReplicas must be >= 2');
      if (!(hs.maxReplicas >= hs.minReplicas)) findings.add('policy', h.where, 'maxReplicas < minReplicas');
      const cpu = (hs.metrics || []).find(m => m.type === 'Resource' && m.resource && m.resource.name === 'cpu' &&
        m.resource.target && m.resource.target.type === 'Utilization');
      if (!cpu) findings.add('policy', h.where, 'expected a cpu Utilization metric');
      const down = hs.behavior && hs.behavior.scaleDown;
      if (!down || !(down.stabilizationWindowSeconds >= 300)) findings.add('policy', h.where, 'behavior.scaleDown.stabilizationWindowSeconds should be >= 300');
    }
    for (const p of byKind('PodDisruptionBudget')) {
      const ps = p.value.spec || {};
      if (!selects(ps.selector && ps.selector.matchLabels, podLabels)) findings.add('policy', p.where, 'selector does not select the Deployment\'s pods');
      const minReplicas = Math.min(...hpas.map(h => h.value.spec.minReplicas || 1), spec.replicas || Infinity);
      if (ps.minAvailable !== undefined && !(Number(ps.minAvailable) < minReplicas)) {
        findings.add('policy', p.where, `minAvailable ${ps.minAvailable} would block every eviction at ${minReplicas} replicas`);
      }
    }
  }
  if (!byKind('Service').length) findings.add('policy', 'k8s', 'no Service');
  if (!hpas.length) findings.add('policy', 'k8s', 'no HorizontalPodAutoscaler');
  if (!byKind('PodDisruptionBudget').length) findings.add('policy', 'k8s', 'no PodDisruptionBudget');
  // A committed Secret must hold placeholders only.
  for (const [name, s] of secrets) {
    const values = Object.values(Object.assign({}, s.value.stringData));
    if (s.value.data && Object.keys(s.value.data).length) findings.add('policy', s.where, `Secret ${name}: use stringData with a placeholder, not data`);
    for (const v of values) {
      if (!/REPLACE/.test(String(v))) findings.add('policy', s.where, `Secret ${name}: value does not look like a placeholder (REPLACE...): never commit a real token`);
    }
  }
}

// files: Map name -> text. Returns a Findings.
function checkK8s(files, root) {
  const findings = new Findings();
  const listed = kustomizationStage(files, findings);
  const docs = [];
  for (const name of listed) {
    for (const d of loadYamlDocs(name, files.get(name), findings)) {
      if (!isObject(d.value)) findings.add('yaml', d.where, 'not a mapping');
      else docs.push(d);
    }
  }
  schemaStage(docs, findings);
  strictStage(docs, findings);
  k8sPolicy(docs, serverFlags(root), findings);
  return findings;
}

function readDir(dir) {
  const files = new Map();
  for (const f of fs.readdirSync(dir).sort()) {
    if (/\.ya?ml$/.test(f)) files.set(f, fs.readFileSync(path.join(dir, f), 'utf8'));
  }
  return files;
}

// -------------------------------------------------------------------------------------- compose

function checkCompose(name, text, root) {
  const findings = new Findings();
  const docs = loadYamlDocs(name, text, findings);
  if (docs.length !== 1 || !isObject(docs[0].value)) {
    findings.add('compose', name, 'expected one mapping');
    return findings;
  }
  const c = docs[0].value;
  const known = serverFlags(root);
  for (const key of Object.keys(c)) {
    if (key === 'networks') findings.add('policy', name, 'top-level networks: host networking only (no bridge networks)');
    else if (!['services', 'volumes', 'secrets', 'configs', 'name'].includes(key) && !key.startsWith('x-')) findings.add('compose', name, `unexpected top-level key ${key}`);
  }
  const services = c.services || {};
  const want = ['nt-server-1', 'nt-server-2', 'nt-server-3'];
  if (JSON.stringify(Object.keys(services).sort()) !== JSON.stringify(want)) {
    findings.add('policy', name, `services must be ${want.join(', ')}; found ${Object.keys(services).join(', ')}`);
  }
  const grpcPorts = [];
  const metricsPorts = [];
  for (const [svcName, s] of Object.entries(services)) {
    const w = `${name} ${svcName}`;
    if (s.network_mode !== 'host') findings.add('policy', w, 'network_mode must be host');
    for (const k of ['networks', 'ports', 'expose', 'links']) if (k in s) findings.add('policy', w, `${k}: not with host networking`);
    const flags = parseFlags(s.command, known, w, findings);
    const grpcPort = portOf(flags.get('address'));
    const metricsPort = portOf(flags.get('metrics_address'));
    if (!grpcPort) findings.add('policy', w, '--address=HOST:PORT missing');
    if (!metricsPort) findings.add('policy', w, '--metrics_address=HOST:PORT missing');
    grpcPorts.push(grpcPort);
    metricsPorts.push(metricsPort);
    const test = (s.healthcheck && s.healthcheck.test) || [];
    const line = Array.isArray(test) ? test.join(' ') : String(test);
    if (!new RegExp(`\\bnt health --server 127\\.0\\.0\\.1:${grpcPort}$`).test(line)) {
      findings.add('policy', w, `healthcheck must run nt health --server 127.0.0.1:${grpcPort}`);
    }
    const grace = /^(\d+)s$/.exec(s.stop_grace_period || '');
    if (!grace || !(Number(grace[1]) > DRAIN_SECONDS)) findings.add('policy', w, `stop_grace_period must exceed the ${DRAIN_SECONDS} s drain`);
    if (s.read_only !== true) findings.add('policy', w, 'read_only must be true');
    if (!(s.cap_drop || []).includes('ALL')) findings.add('policy', w, 'cap_drop must include ALL');
    if (!/^10001(:\d+)?$/.test(String(s.user || ''))) findings.add('policy', w, 'user must be 10001');
  }
  const expect = (list, first, what) => {
    const wanted = list.map((_, i) => first + i);
    if (JSON.stringify(list) !== JSON.stringify(wanted)) findings.add('policy', name, `${what} ports ${list.join(',')}: expected ${wanted.join(',')}`);
  };
  expect(grpcPorts, 50051, 'gRPC');
  expect(metricsPorts, 9464, 'metrics');
  const list = grpcPorts.map(p => `127.0.0.1:${p}`).join(',');
  if (!text.includes(`NT_SERVER=${list}`)) findings.add('policy', name, `the header comment should show NT_SERVER=${list}`);
  return findings;
}

// ------------------------------------------------------------------------------------ Dockerfile

function checkDockerfile(name, text) {
  const findings = new Findings();
  const utils = require('dockerfile-utils');
  for (const d of utils.validate(text)) {
    findings.add('dockerfile-utils', `${name}:${d.range.start.line + 1}`, `${d.severity === 1 ? 'error' : 'warning'}: ${d.message}`);
  }
  // dockerfilelint, less the false positives it is known for (each checked narrowly):
  //  - "Base Image Missing Tag" on FROM ${ARG} when the ARG's default names a tag or digest;
  //  - "Invalid Argument Format" on HEALTHCHECK: its option regex (--\w+) cuts --start-period at the dash.
  const argDefaults = new Map([...text.matchAll(/^ARG\s+(\w+)=(\S+)/gm)].map(m => [m[1], m[2]]));
  const lint = require('dockerfilelint');
  const lines = text.split('\n');
  for (const item of lint.run(path.join(__dirname, 'no-dockerfilelintrc'), text)) {
    const content = String(lines[item.line - 1] || '').trim();
    if (item.rule === 'missing_tag') {
      const m = /^FROM\s+\$\{?(\w+)\}?(\s|$)/i.exec(content);
      const def = m && argDefaults.get(m[1]);
      if (def && (/:[\w][\w.-]*$/.test(def.split('/').pop()) || def.includes('@'))) continue;
    }
    if (item.rule === 'invalid_format' && /^HEALTHCHECK\s/i.test(content)) {
      const opts = content.replace(/\\$/, '').trim().split(/\s+/).slice(1).filter(o => o.startsWith('--'));
      if (opts.length && opts.every(o => /^--(interval|timeout|start-period|start-interval|retries)=\w+$/.test(o))) continue;
    }
    findings.add('dockerfilelint', `${name}:${item.line}`, `${item.category}: ${item.title} (${item.rule}): ${content}`);
  }
  return findings;
}

// ------------------------------------------------------------------------------------- self-test

// Each case breaks one real file in memory and names the stage that must catch it.
function selfTest(root) {
  const k8sDir = path.join(root, 'deploy', 'k8s');
  const composeFile = path.join(root, 'deploy', 'docker-compose.yml');
  const dockerfile = path.join(root, 'Dockerfile');
  const files = readDir(k8sDir);
  const compose = fs.readFileSync(composeFile, 'utf8');
  const docker = fs.readFileSync(dockerfile, 'utf8');
  const k8sCases = [
    ['typo\'d container field', 'deployment.yaml', 'imagePullPolicy:', 'imagePullPolicyy:', 'strict'],
    ['misplaced field', 'deployment.yaml', '      automountServiceAccountToken: false', '      automountServiceAccountToken: false\n      replicas: 2', 'strict'],
    ['string for an integer', 'deployment.yaml', 'terminationGracePeriodSeconds: 30', 'terminationGracePeriodSeconds: "30"', 'schema'],
    ['malformed quantity', 'deployment.yaml', 'memory: 10Gi', 'memory: 10 GiB', 'schema'],
    ['missing required field', 'hpa.yaml', '  maxReplicas: 8\n', '', 'schema'],
    ['unknown apiVersion', 'hpa.yaml', 'apiVersion: autoscaling/v2', 'apiVersion: autoscaling/v3', 'schema'],
    ['unknown server flag', 'deployment.yaml', '--memory_budget_mb=', '--memory_budgt_mb=', 'policy'],
    ['writable root filesystem', 'deployment.yaml', 'readOnlyRootFilesystem: true', 'readOnlyRootFilesystem: false', 'policy'],
    ['memory budget near the limit', 'deployment.yaml', '--memory_budget_mb=6144', '--memory_budget_mb=9216', 'policy'],
    ['Service selecting nothing', 'service.yaml', '  selector:\n    app.kubernetes.io/name: nt-server', '  selector:\n    app.kubernetes.io/name: nt-servr', 'policy'],
    ['Service with a ClusterIP', 'service.yaml', 'clusterIP: None', 'clusterIP: ""', 'policy'],
    ['grace period shorter than the drain', 'deployment.yaml', 'terminationGracePeriodSeconds: 30', 'terminationGracePeriodSeconds: 10', 'policy'],
    ['real-looking token', 'secret-token.example.yaml', 'token: REPLACE-ME-placeholder-token-not-a-secret', 'token: 3f1c9e', 'policy'],
    ['missing resource file', 'kustomization.yaml', '  - pdb.yaml', '  - pdb.yaml\n  - networkpolicy.yaml', 'kustomize'],
    ['duplicate key', 'pdb.yaml', '  maxUnavailable: 1', '  maxUnavailable: 1\n  maxUnavailable: 2', 'yaml'],
  ];
  const failures = [];
  const expectCaught = (label, findings, stage) => {
    const hit = findings.items.filter(f => f.stage === stage);
    if (hit.length) console.log(`  ok: ${label} -> [${stage}] ${hit[0].where}: ${hit[0].message}`);
    else failures.push(`${label}: not caught by [${stage}] (findings: ${findings.items.map(f => `[${f.stage}] ${f.message}`).join('; ') || 'none'})`);
  };
  const base = checkK8s(files, root);
  if (base.count) failures.push(`the unmodified manifests have ${base.count} finding(s)`);
  for (const [label, file, from, to, stage] of k8sCases) {
    const text = files.get(file);
    if (!text || !text.includes(from)) { failures.push(`${label}: ${file} no longer contains ${JSON.stringify(from)}: update the self-test`); continue; }
    const broken = new Map(files);
    broken.set(file, text.replace(from, to));
    expectCaught(label, checkK8s(broken, root), stage);
  }
  const composeCases = [
    ['compose healthcheck on the wrong port', '"127.0.0.1:50052"]', '"127.0.0.1:50051"]', 'policy'],
    ['compose bridge network', 'network_mode: host', 'network_mode: bridge', 'policy'],
    ['compose unknown server flag', '--upload_budget_mb=1024', '--upload_budgetmb=1024', 'policy'],
  ];
  for (const [label, from, to, stage] of composeCases) {
    if (!compose.includes(from)) { failures.push(`${label}: docker-compose.yml no longer contains ${JSON.stringify(from)}`); continue; }
    expectCaught(label, checkCompose('docker-compose.yml', compose.replace(from, to), root), stage);
  }
  const dockerCases = [
    ['Dockerfile invalid EXPOSE', 'EXPOSE 50051', 'EXPOSE grpc', 'dockerfile-utils'],
    ['Dockerfile apt-get update alone', 'EXPOSE 50051', 'EXPOSE 50051\nRUN apt-get update', 'dockerfilelint'],
    ['Dockerfile unknown HEALTHCHECK flag', '--retries=3', '--retries=3 --bogus=1', 'dockerfile-utils'],
  ];
  const dbase = checkDockerfile('Dockerfile', docker);
  for (const [label, from, to, stage] of dockerCases) {
    if (!docker.includes(from)) { failures.push(`${label}: Dockerfile no longer contains ${JSON.stringify(from)}`); continue; }
    const f = checkDockerfile('Dockerfile', docker.replace(from, to));
    // Only findings the unmodified Dockerfile does not already have count.
    f.items = f.items.filter(i => !dbase.items.some(b => b.stage === i.stage && b.message === i.message));
    expectCaught(label, f, stage);
  }
  return failures;
}

// ------------------------------------------------------------------------------------------ main

function main(argv) {
  const [cmd, target, rootArg] = argv;
  const root = rootArg ? path.resolve(rootArg) : path.resolve(__dirname, '..', '..');
  let findings;
  if (cmd === 'k8s' && target) {
    findings = checkK8s(readDir(target), root);
  } else if (cmd === 'compose' && target) {
    findings = checkCompose(path.basename(target), fs.readFileSync(target, 'utf8'), root);
  } else if (cmd === 'dockerfile' && target) {
    findings = checkDockerfile(path.relative(process.cwd(), target) || target, fs.readFileSync(target, 'utf8'));
  } else if (cmd === 'self-test' && target) {
    const failures = selfTest(path.resolve(target));
    for (const f of failures) process.stderr.write(`  SELF-TEST FAILED: ${f}\n`);
    console.log(failures.length ? `self-test: ${failures.length} failure(s)` : 'self-test: every broken variant was rejected');
    return failures.length ? 1 : 0;
  } else {
    process.stderr.write('usage: validate.js k8s DIR [ROOT] | compose FILE [ROOT] | dockerfile FILE | self-test ROOT\n');
    return 2;
  }
  findings.print();
  console.log(`${cmd} ${target}: ${findings.count} finding(s)`);
  return findings.count ? 1 : 0;
}

process.exitCode = main(process.argv.slice(2));
