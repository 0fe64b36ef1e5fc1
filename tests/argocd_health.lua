-- Runs an Argo CD health check the way Argo CD runs it, under Lua 5.1 (Argo CD embeds gopher-lua,
-- which implements Lua 5.1):
--
--   lua5.1 tests/argocd_health.lua path/to/health.lua < object.lua
--
-- The object arrives on stdin as a Lua table constructor (tests/argocd_health.rs writes it from
-- the YAML test object) and becomes the global `obj`. The script runs with only what Argo CD opens
-- for it (the base and table libraries and a "safe" os with time, date, clock and difftime; not
-- string, math or io, and no string methods) and must return a table whose status is a health
-- code Argo CD knows. Prints the status on the first line and the message after it.

local function fail(message)
  io.stderr:write(message, "\n")
  os.exit(1)
end

local script_path = arg[1]
if script_path == nil then
  fail("usage: lua5.1 argocd_health.lua HEALTH_LUA < OBJECT_LUA")
end

local object_source = io.read("*a")
local load_object, object_error = loadstring("return " .. object_source, "=object")
if load_object == nil then
  fail("the test object is not a Lua table constructor: " .. tostring(object_error))
end
setfenv(load_object, {})
local obj = load_object()
if type(obj) ~= "table" then
  fail("the test object is not a table")
end

local file, open_error = io.open(script_path, "rb")
if file == nil then
  fail("cannot read " .. script_path .. ": " .. tostring(open_error))
end
local script = file:read("*a")
file:close()
local chunk, syntax_error = loadstring(script, "=" .. script_path)
if chunk == nil then
  fail("syntax error: " .. tostring(syntax_error))
end

-- What Argo CD's Lua state offers a health script: gopher-lua's base library (less the functions
-- that read files or load modules, which a health check has no business using), the table
-- library and a safe os.
local env = {}
for _, name in ipairs({
  "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "print", "rawequal",
  "rawget", "rawset", "select", "setmetatable", "tonumber", "tostring", "type", "unpack",
  "xpcall", "_VERSION",
}) do
  env[name] = _G[name]
end
env.table = {}
for name, f in pairs(table) do
  env.table[name] = f
end
env.os = { time = os.time, date = os.date, clock = os.clock, difftime = os.difftime }
env._G = env
env.obj = obj
setfenv(chunk, env)

-- Without the string library, gopher-lua gives strings no methods: ("x"):upper() fails there, so
-- it must fail here too.
local string_metatable = getmetatable("")
local string_index = string_metatable.__index
string_metatable.__index = nil
local ok, hs = pcall(chunk)
string_metatable.__index = string_index

if not ok then
  fail("the script failed: " .. tostring(hs))
end
if type(hs) ~= "table" then
  fail("expected a table from the script, not " .. type(hs))
end
local known = { Healthy = true, Progressing = true, Degraded = true, Suspended = true, Missing = true, Unknown = true }
if type(hs.status) ~= "string" or not known[hs.status] then
  fail("not a health status Argo CD knows: " .. tostring(hs.status))
end
if hs.message ~= nil and type(hs.message) ~= "string" then
  fail("hs.message is a " .. type(hs.message) .. ", not a string")
end
io.write(hs.status, "\n", hs.message or "")
