// Starting and stopping `q3vl serve` for the tests: on loopback, any free port (read from the
// server's "serving ... on http://HOST:PORT" line), killed if a test leaves it behind.
import { spawn, execFileSync } from 'node:child_process';

export function q3vl(args) {
  return execFileSync(process.env.Q3VL_BINARY, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

// Starts a q3vl process (`program argv`) and resolves once its stderr matches `ready` (within
// 60 s): { proc, match, url (match[1]), exited, log() }.
export function startProcess(program, argv, ready, env = {}) {
  const proc = spawn(program, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve(code ?? signal)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`q3vl ${argv[0]} did not start in 60 s:\n${log}`)), 60000);
    let started = false;
    proc.stderr.on('data', (d) => {
      log += d;
      const m = ready.exec(log);
      if (m && !started) {
        started = true;
        clearTimeout(timer);
        resolve({ proc, match: m, url: m[1], exited, log: () => log });
      }
    });
    proc.on('exit', () => { clearTimeout(timer); if (!started) reject(new Error(`q3vl exited:\n${log}`)); });
  });
}

// `ranks` > 1: under mpirun (Q3VL_MPIEXEC), e.g. with --mesh in `args`.
export function startServer(args, env = {}, ranks = 1) {
  const command = ['serve', '--model', process.env.Q3VL_MODEL_DIR, '--port', '0', ...args];
  const [program, argv] = ranks > 1
    ? [process.env.Q3VL_MPIEXEC, ['--allow-run-as-root', '--oversubscribe', '-np', String(ranks), process.env.Q3VL_BINARY, ...command]]
    : [process.env.Q3VL_BINARY, command];
  return startProcess(program, argv, /serving \S+ on (http:\/\/[\d.]+:\d+)/, env);
}

export async function stopServer(server) {
  if (!server) return;
  server.proc.kill('SIGTERM');
  let timer;  // cleared, or it keeps node alive for its 20 s after the last test
  const timeout = new Promise((r) => { timer = setTimeout(() => r('timeout'), 20000); });
  if ((await Promise.race([server.exited, timeout])) === 'timeout') server.proc.kill('SIGKILL');
  clearTimeout(timer);
}

// The value of a sample in /metrics: `name{...labels containing `label`...}`.
export async function metric(server, name, label = '') {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) && line.includes(label)) return Number(line.split(' ').at(-1));
  }
  throw new Error(`no sample ${name} ${label} in /metrics`);
}
