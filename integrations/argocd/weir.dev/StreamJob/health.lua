-- Argo CD health of a weir.dev StreamJob. Install it as the
-- `resource.customizations.health.weir.dev_StreamJob` key of the argocd-cm
-- ConfigMap (see README.md beside this folder). Healthy means the job runs
-- and checkpoints (or finished), not merely that its pods exist.
local hs = {}
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the Weir operator to act on the job"
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "the operator has not acted on generation " .. generation .. " yet"
  return hs
end
local conditions = {}
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    conditions[c.type] = c
  end
end
local function says(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end
if obj.status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "suspended: pods deleted, state and checkpoints kept"
  return hs
end
local stalled = conditions["Stalled"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = says(stalled)
  return hs
end
local ready = conditions["Ready"]
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = says(ready)
  return hs
end
if obj.status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = "the job failed"
  return hs
end
if obj.status.phase == "Running" and ready ~= nil and ready.reason == "CheckpointsStalled" then
  hs.status = "Degraded"
  hs.message = says(ready)
  return hs
end
hs.status = "Progressing"
if obj.status.phase == "Restarting" and obj.status.restarts ~= nil and obj.status.restarts.lastFailure ~= nil then
  local f = obj.status.restarts.lastFailure
  hs.message = "restarting after pod " .. f.pod .. " failed: " .. f.reason
elseif ready ~= nil then
  hs.message = says(ready)
else
  hs.message = "the job is " .. (obj.status.phase or "Pending")
end
return hs
