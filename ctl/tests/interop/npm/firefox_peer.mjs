// Firefox ESR as a peer for p2pd's interop tests (ctl/tests/current_stacks.rs):
// headless, driven by puppeteer-core over WebDriver BiDi, it opens the same
// page as the Chromium tests (../peer.html) and prints the page's event lines
// ("P2P welcome ff", "P2P open p2p", ...) without their "P2P " on stdout, so
// the test reads them as it reads the other peers'.
//
// Kept off the network: the page sets no ICE servers but the welcome's;
// host candidates are addresses (no mDNS names); every proxy setting points
// at a dead port (loopback is never proxied); the settings server and the
// other start-up look-ups point at that dead port too, which Firefox honours
// for `services.settings.server` only with MOZ_REMOTE_SETTINGS_DEVTOOLS=1.
//
//   node_modules/.bin/node firefox_peer.mjs --firefox /usr/bin/firefox-esr \
//       --page file:///.../peer.html?url=ws://...&id=ff[&pair=ID][&hellos=N]

import puppeteer from "puppeteer-core";

const args = Object.fromEntries(
  process.argv
    .slice(2)
    .reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const dead = "http://127.0.0.1:9";
process.env.MOZ_REMOTE_SETTINGS_DEVTOOLS = "1";

const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath: args.firefox,
  protocol: "webDriverBiDi",
  headless: true,
  extraPrefsFirefox: {
    // Host candidates as addresses: p2pd does not resolve .local names.
    "media.peerconnection.ice.obfuscate_host_addresses": false,
    "media.peerconnection.ice.default_address_only": false,
    // The tests bind p2pd to 127.0.0.1: Firefox must take loopback
    // candidates (it skips them, and checks from them, by default).
    "media.peerconnection.ice.loopback": true,
    // Nothing leaves the machine: a dead proxy for everything.
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.http_port": 9,
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.ssl_port": 9,
    "network.proxy.socks": "127.0.0.1",
    "network.proxy.socks_port": 9,
    "network.proxy.no_proxies_on": "",
    "services.settings.server": `${dead}/settings`,
    "network.connectivity-service.enabled": false,
    "network.captive-portal-service.enabled": false,
    "app.update.enabled": false,
    "browser.safebrowsing.malware.enabled": false,
    "browser.safebrowsing.phishing.enabled": false,
    "datareporting.policy.dataSubmissionEnabled": false,
    "toolkit.telemetry.enabled": false,
    "media.gmp-manager.url": `${dead}/gmp`,
    "extensions.update.enabled": false,
    "browser.search.update": false,
  },
});
const page = await browser.newPage();
page.on("console", (m) => {
  const t = m.text();
  if (t.startsWith("P2P ")) process.stdout.write(t.slice(4) + "\n");
});
await page.goto(args.page);
// Runs until the test kills it; a closed browser ends it too.
browser.on("disconnected", () => process.exit(0));
