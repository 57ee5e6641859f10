// Writes WGSL modules as the other backends' shading languages with naga, as wgpu's Metal, D3D12
// and GL backends do: stdin is JSON [{name, code, entry, targets: ["msl", "hlsl 6_2", "glsl 310 es",
// ...]}]; stdout is JSON [{name, target, error}] with error null where naga wrote the target.
// Validation errors (naga's validator sees every module first) come back as target "validate".
import { readFileSync } from "node:fs";
import { parseWgsl, validate, writeGlsl, writeHlsl, writeMsl } from "naga-wasm";

const write = {
  msl: (mod, info) => writeMsl(mod, info, { langVersion: [2, 4] }),
  hlsl: (mod, info, _entry, model) => writeHlsl(mod, info, { shaderModel: model }),
  glsl: (mod, info, entry, version) => writeGlsl(mod, info, { version, stage: "compute", entryPoint: entry }),
};

const results = [];
for (const { name, code, entry, targets } of JSON.parse(readFileSync(0, "utf8"))) {
  let mod, info;
  try {
    mod = parseWgsl(code);
    info = validate(mod);
  } catch (e) {
    results.push({ name, target: "validate", error: e.formatted ?? String(e.message ?? e) });
    mod?.free();
    continue;
  }
  for (const target of targets) {
    const [lang, ...version] = target.split(" ");
    let error = null;
    try {
      if (!write[lang]) throw new Error(`unknown target ${target}`);
      if (!write[lang](mod, info, entry, version.join(" ") || undefined)) throw new Error("empty output");
    } catch (e) {
      error = e.formatted ?? String(e.message ?? e);
    }
    results.push({ name, target, error });
  }
  info.free();
  mod.free();
}
process.stdout.write(JSON.stringify(results));
