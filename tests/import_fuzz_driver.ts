/**
 * Child process of `import_fuzz_test.ts`: imports every file listed in `<dir>/cases.json` with
 * `importNetwork` (cpu backend) and reports one line per step on stdout, so that the parent can
 * time each case, see which one hangs or exhausts memory, and compare what loaded:
 *
 * - `START i` before case i;
 * - `OK i <sha256 of the state dict>` or `ERR i <error name> <JSON message>` after it;
 * - `RSS i <bytes>` after it.
 *
 * Usage: `deno run -A tests/import_fuzz_driver.ts DIR`
 */
import { tf } from "../lib/deps.ts";
import { tensorBytes } from "../lib/io/host_tensor.ts";
import { importNetwork } from "../lib/nets/import.ts";
import { initBackend } from "../lib/runtime/backend.ts";

const enc = new TextEncoder();
const say = (s: string) => Deno.stdout.writeSync(enc.encode(s + "\n"));

const dir = Deno.args[0];
const cases: { file: string }[] = JSON.parse(Deno.readTextFileSync(`${dir}/cases.json`));
await initBackend("cpu");

for (let i = 0; i < cases.length; i++) {
  say(`START ${i}`);
  try {
    const { net } = await importNetwork(`${dir}/${cases[i].file}`);
    try {
      const state = await net.stateDict();
      const parts: Uint8Array[] = [];
      for (const [name, t] of [...state].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
        parts.push(enc.encode(`${name}:${t.dtype}:${t.shape.join("x")};`), tensorBytes(t));
      }
      const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let off = 0;
      for (const p of parts) {
        all.set(p, off);
        off += p.length;
      }
      const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
      say(`OK ${i} ${Array.from(hash, (b) => b.toString(16).padStart(2, "0")).join("")}`);
    } finally {
      net.dispose();
    }
  } catch (e) {
    const err = e as Error;
    say(`ERR ${i} ${err?.name ?? typeof e} ${JSON.stringify(String(err?.message ?? e))}`);
  }
  say(`RSS ${i} ${Deno.memoryUsage().rss} ${tf.memory().numTensors}`);
}
say("DONE");
