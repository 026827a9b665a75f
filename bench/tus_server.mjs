// The peer of bench.peer_tus: @tus/server with @tus/file-store, as their README sets them up.
// node tus_server.mjs PORT DIRECTORY (run from the folder npm installed them into; bench.peer_tus does).
import { Server } from "@tus/server";
import { FileStore } from "@tus/file-store";

const [port, directory] = process.argv.slice(2);
const server = new Server({ path: "/files", datastore: new FileStore({ directory }) });
server.listen({ host: "127.0.0.1", port: Number(port) });
