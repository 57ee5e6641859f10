// OpenAI's official Node SDK against the speech server, as a client written for OpenAI calls it:
// node speech.mjs BASE_URL writes JSON to stdout: {wav (base64), models, sse: [event types], usage, error}.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.argv[2], apiKey: "unused", maxRetries: 0 });
const input = "Hello there, friend.";
const out = {};

// a dated snapshot and a voice of the current SDK's own types; seed is wsvk's extension
const wav = await client.audio.speech.create({
  model: "gpt-4o-mini-tts-2025-12-15", voice: "marin", input, response_format: "wav", seed: 3,
});
out.wav = Buffer.from(await wav.arrayBuffer()).toString("base64");
out.models = (await client.models.list()).data.map((m) => m.id);

// streamed as server-sent events, read as the SDK hands them over
const sse = await client.audio.speech.create({
  model: "tts-1", voice: "cedar", input, response_format: "pcm", stream_format: "sse", seed: 3,
});
const text = await sse.text();
const events = text.split("\n").filter((l) => l.startsWith("data: ")).map((l) => JSON.parse(l.slice(6)));
out.sse = events.map((e) => e.type);
out.pcm = Buffer.concat(events.filter((e) => e.audio).map((e) => Buffer.from(e.audio, "base64"))).toString("base64");
out.usage = events.at(-1).usage;

try {  // an unknown voice: the SDK's own error class, with the server's message
  await client.audio.speech.create({ model: "tts-1", voice: "nobody", input });
} catch (e) {
  out.error = { status: e.status, name: e.constructor.name, message: e.error?.message ?? e.message };
}
process.stdout.write(JSON.stringify(out));
