-- Argo CD health check for registrar.dev/InstanceRegistration.
--
-- Install it as the argocd-cm entry
-- resource.customizations.health.registrar.dev_InstanceRegistration (see the README).
-- Argo CD runs this with the object as the global `obj` and reads the table it returns:
-- hs.status (Healthy, Progressing, Degraded or Suspended) and hs.message.
--
-- In order:
--   being deleted                              -> Progressing ("deleting: ...")
--   spec.suspend                               -> Suspended
--   status not yet for metadata.generation     -> Progressing (waiting for the controller)
--   Stalled=True, or phase Failed              -> Degraded (Stalled's, else Ready's, reason and message)
--   Ready=True                                 -> Healthy
--   anything else (Reconciling: under way)     -> Progressing (Ready's reason and message)
-- A condition whose observedGeneration is behind metadata.generation describes a spec that no
-- longer exists and is ignored, as kubectl wait and Argo CD's own checks do.
--
-- Written for Lua 5.1 (Argo CD's gopher-lua): base, string and table functions only.

local hs = {}

local metadata = obj.metadata or {}
local spec = obj.spec or {}
local status = obj.status or {}
local generation = metadata.generation

-- Whether something computed for generation `observed` describes the current spec. Without a
-- generation on either side there is nothing to compare, and it counts.
local function current(observed)
  if generation == nil or observed == nil then
    return true
  end
  return observed >= generation
end

-- The condition of type `t` if it is current, else nil. A condition without its own
-- observedGeneration is as current as the status it belongs to.
local function condition(t)
  if type(status.conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if type(c) == "table" and c.type == t then
      local observed = c.observedGeneration
      if observed == nil then
        observed = status.observedGeneration
      end
      if current(observed) then
        return c
      end
      return nil
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

-- "Reason: message", or whichever of the two is there.
local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason
  local message = c.message
  if reason ~= nil and reason ~= "" and message ~= nil and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= nil and message ~= "" then
    return message
  end
  if reason ~= nil and reason ~= "" then
    return reason
  end
  return fallback
end

local ready = condition("Ready")

if metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  if ready ~= nil and ready.reason == "Deleting" and ready.message ~= nil and ready.message ~= "" then
    hs.message = ready.message
  else
    hs.message = "deleting"
  end
  return hs
end

if spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true: the controller takes no action"
  return hs
end

if status.observedGeneration == nil or not current(status.observedGeneration) then
  hs.status = "Progressing"
  if generation == nil then
    hs.message = "waiting for the controller"
  elseif status.observedGeneration == nil then
    hs.message = "waiting for the controller to observe generation " .. tostring(generation)
  else
    hs.message = "waiting for the controller to observe generation " .. tostring(generation)
      .. " (status is for generation " .. tostring(status.observedGeneration) .. ")"
  end
  return hs
end

local stalled = condition("Stalled")
if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = describe(stalled, describe(ready, "stalled"))
  return hs
end
if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(ready, status.message or "failed")
  return hs
end

if is_true(ready) then
  hs.status = "Healthy"
  hs.message = (ready.message ~= nil and ready.message ~= "") and ready.message or "ready"
  if status.opsworksInstanceId ~= nil and status.opsworksInstanceId ~= "" then
    hs.message = hs.message .. " (OpsWorks instance " .. status.opsworksInstanceId .. ")"
  end
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, describe(condition("Reconciling"), status.message or "waiting for the controller"))
return hs
