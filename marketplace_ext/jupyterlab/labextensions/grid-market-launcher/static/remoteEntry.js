// A prebuilt JupyterLab 4 extension, written by hand instead of built with webpack: it is the
// module-federation container JupyterLab's bootstrap expects (window._JUPYTERLAB[name] with
// init(shareScope) and get(module)). It takes @jupyterlab/launcher and @jupyterlab/ui-components
// from the application's share scope, so its plugin requires the same ILauncher token the
// application provides, and adds one Launcher card: "Grid Data Supermarket", which opens the
// marketplace in a new browser tab.
(function () {
  "use strict";
  var NAME = "grid-market-launcher";
  var COMMAND = "grid-market:open";
  var ICON_SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">' +
    '<path class="jp-icon3" fill="#616161" d="M7 18c-1.1 0-2 .9-2 2s.9 2 2 2 2-.9 2-2-.9-2-2-2zm10 0c-1.1 0-2 .9-2 2s.9 2 2 2 2-.9 2-2-.9-2-2-2zM7.2 14.8 8.1 13h7.4c.75 0 1.4-.41 1.75-1.03L21 4.96 19.25 4l-3.7 7H8.53L4.27 2H1v2h2l3.6 7.59-1.35 2.44C4.52 15.37 5.48 17 7 17h12v-2H7.42c-.13 0-.22-.09-.22-.2z"/></svg>';
  var shareScope = null;

  function configOption(name) {
    var el = document.getElementById("jupyter-config-data");
    try {
      return (el && JSON.parse(el.textContent || "{}")[name]) || "";
    } catch (e) {
      return "";
    }
  }

  function marketplaceUrl() {
    // the hub's prefix ends in "hub/"; services live beside it
    var hubPrefix = configOption("hubPrefix") || "/hub/";
    return hubPrefix.replace(/hub\/?$/, "") + "services/marketplace/";
  }

  async function shared(pkg) {
    var versions = shareScope && shareScope[pkg];
    if (!versions) throw new Error(NAME + ": " + pkg + " is not in the share scope");
    var keys = Object.keys(versions).sort().reverse();
    var factory = await versions[keys[0]].get();
    return typeof factory === "function" ? factory() : factory;
  }

  async function extension() {
    var launcher = await shared("@jupyterlab/launcher");
    var icon;
    try {
      var ui = await shared("@jupyterlab/ui-components");
      icon = new ui.LabIcon({ name: NAME + ":cart", svgstr: ICON_SVG });
    } catch (e) {
      icon = undefined;
    }
    var plugin = {
      id: NAME + ":plugin",
      description: "A Launcher card opening the Grid Data Supermarket",
      autoStart: true,
      requires: [launcher.ILauncher],
      activate: function (app, launcherService) {
        app.commands.addCommand(COMMAND, {
          label: "Grid Data Supermarket",
          caption: "Open the marketplace: the shelf, your runs, federated projects, the log",
          icon: icon,
          execute: function () {
            window.open(marketplaceUrl(), "_blank");
          }
        });
        launcherService.add({ command: COMMAND, category: "Other", rank: 0 });
      }
    };
    return { __esModule: true, default: [plugin] };
  }

  window._JUPYTERLAB = window._JUPYTERLAB || {};
  window._JUPYTERLAB[NAME] = {
    init: function (scope) {
      shareScope = scope;
      return Promise.resolve();
    },
    get: function (module) {
      if (module !== "./extension") {
        return Promise.reject(new Error(NAME + " has no module " + module));
      }
      return extension().then(function (exports) {
        return function () { return exports; };
      });
    }
  };
})();
